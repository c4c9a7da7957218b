"""A real two-process run on localhost (CPU collectives through gloo).

Both processes end with bitwise-identical parameters, equal (to float32
rounding) to a one-process run over the same tasks.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np

from tests.helpers import HANG_TIMEOUT_S, SLOW, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = textwrap.dedent("""
    import functools, sys
    import numpy as np
    import jax
    import metagan_jax as mg
    from metagan_jax import parallel

    out, pid, nproc, coord = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if nproc > 1:
      assert parallel.initialize_distributed(coord, nproc, pid)
    model = mg.models.mlp(data_dim=2, z_dim=3, hidden=(16,))
    cfg = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=2, inner_lr=0.1), algorithm="maml",
                        outer_lr=1e-2)
    mesh = cfg.task_mesh()
    T = 8
    state = parallel.replicate(mg.init(jax.random.key(1), cfg), mesh)
    step = jax.jit(functools.partial(mg.meta_step, config=cfg))
    for i in range(3):
      tasks, _ = mg.toy.RingMixtures().sample_tasks(jax.random.key(100 + i), T, 6, 5)
      # Each process feeds only its own slice of the batch.
      n = T // nproc
      local = jax.tree.map(lambda x: np.asarray(x)[pid * n:(pid + 1) * n], tasks)
      state, metrics = step(state, parallel.shard_tasks(local, mesh), jax.random.key(i))
    leaves = parallel.to_host(jax.tree.leaves(state.params))
    np.savez(out, *leaves, devices=jax.device_count(), processes=jax.process_count())
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# --- ending a run: process 0 works alone past the shutdown timeout ------------

# One cross-process collective, then process 0 works alone (as it does when it
# writes tables, figures and checkpoints) for longer than JAX's shutdown barrier
# waits. "context" ends through mg.parallel.distributed; "plain" only initialises,
# as the experiment scripts did before, and leaves the shutdown to JAX at exit.
_ENDING = textwrap.dedent("""
    import sys, time
    import jax
    import numpy as np
    from metagan_jax import parallel
    pid, coord, how, extra_s = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])

    def job():
      mesh = parallel.task_mesh()
      x = parallel.shard_tasks(np.full((1,), pid + 1.0, np.float32), mesh)
      assert float(parallel.to_host(jax.jit(lambda a: a.sum())(x))) == 3.0
      if pid == 0:
        time.sleep(extra_s)  # process-0-only work
      print("work done", flush=True)

    if how == "context":
      with parallel.distributed(coord, 2, pid, shutdown_timeout_s=2):
        job()
    else:
      parallel.initialize_distributed(coord, 2, pid, shutdown_timeout_s=2)
      job()
""")


def _start_all(cmds_envs):
  return [
    subprocess.Popen(
      c, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for c, e in cmds_envs
  ]


def _wait_all(procs):
  """``[(returncode, output)]``, every pipe drained at once.

  Reading one process to its end before the next would let a full pipe stall
  the other process in a write while the first waits for it at a barrier.
  """
  outs = [""] * len(procs)

  def drain(i):
    outs[i] = procs[i].communicate(timeout=HANG_TIMEOUT_S)[0]

  threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(procs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return [(p.returncode, o) for p, o in zip(procs, outs)]


def test_process_0_working_alone_past_the_shutdown_timeout_ends_cleanly():
  # JAX's shutdown barrier waits 2 s here; process 0 works alone for 8 s after the others.
  # The fixed run and its control (the same script without the final barrier) at once.
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(1)}
  coords = {how: f"localhost:{_free_port()}" for how in ("context", "plain")}
  procs = _start_all(
    [
      ([sys.executable, "-c", _ENDING, str(i), coords[how], how, "8"], env)
      for how in ("context", "plain")
      for i in range(2)
    ]
  )
  (c0, o0), (c1, o1), (p0, q0), (p1, q1) = _wait_all(procs)
  assert [c0, c1] == [0, 0], (o0, o1)
  assert "work done" in o0 and "work done" in o1
  # Control: both are aborted at JAX's shutdown barrier (process 0 in the middle of its
  # work), as the two-process experiment test was on a slow day.
  assert [p0, p1] != [0, 0], (q0, q1)
  assert "work done" in q1, q1
  assert any("Barrier timed out" in q and "Shutdown" in q for q in (q0, q1)), (q0, q1)


def test_barrier_names_the_barrier_and_the_setting_after_its_timeout():
  script = textwrap.dedent("""
      import sys
      from metagan_jax import parallel
      pid, coord = int(sys.argv[1]), sys.argv[2]
      parallel.initialize_distributed(coord, 2, pid)
      if pid == 1:  # process 0 never comes to this one
        try:
          parallel.barrier("only_one_comes", timeout_s=1)
        except TimeoutError as e:
          print("TIMEOUT", e, flush=True)
      parallel.barrier("both_come")
  """)
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(1)}
  coord = f"localhost:{_free_port()}"
  procs = _start_all([([sys.executable, "-c", script, str(i), coord], env) for i in range(2)])
  outs = [o for _, o in _wait_all(procs)]
  assert "TIMEOUT" in outs[1], outs
  assert "'only_one_comes'" in outs[1] and "METAGAN_BARRIER_TIMEOUT_S" in outs[1], outs


def test_two_processes_end_identical_and_equal_one_process(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(2)}
  coord = f"localhost:{_free_port()}"
  procs = _start_all(
    [
      ([sys.executable, "-c", _WORKER, str(tmp_path / f"p{i}.npz"), str(i), "2", coord], env)
      for i in range(2)
    ]
  )
  for code, out in _wait_all(procs):
    assert code == 0, out[-3000:]
  single = subprocess.run(
    [sys.executable, "-c", _WORKER, str(tmp_path / "single.npz"), "0", "1", "-"],
    cwd=ROOT,
    env={**env, "XLA_FLAGS": xla_flags()},
    capture_output=True,
    text=True,
    timeout=HANG_TIMEOUT_S,
  )
  assert single.returncode == 0, single.stderr[-3000:]

  p0, p1, s = (np.load(tmp_path / f) for f in ("p0.npz", "p1.npz", "single.npz"))
  assert int(p0["devices"]) == 4 and int(p0["processes"]) == 2
  assert int(s["devices"]) == 1 and int(s["processes"]) == 1
  keys = [k for k in p0.files if k.startswith("arr_")]
  assert keys
  for k in keys:
    np.testing.assert_array_equal(p0[k], p1[k])  # identical in both processes
    np.testing.assert_allclose(p0[k], s[k], rtol=1e-5, atol=1e-6)


# --- the experiment entry point with two processes ----------------------------

_OMNIGLOT = [
  sys.executable,
  os.path.join(ROOT, "experiments", "omniglot.py"),
  "--config",
  os.path.join(ROOT, "experiments", "configs", "tiny.py"),
  "--mode",
  "train",
  "--config.methods=fomaml",
  "--config.init=random",  # no pre-training stage: meta-training is what shards
  # first order and the NS loss: 5 processes compile this step on 2 cores
  # (second-order sharding is tested in-process: test_sharding.py)
  "--config.loss=ns",
  # Adam's first steps move every weight by about +-lr whatever its gradient's
  # size, so the sign of a ~1e-9 gradient (which the order of a sum over
  # devices decides) would decide a difference of 2 lr: compare a
  # well-conditioned update instead (SGD inside, Adam with a larger eps outside)
  "--config.inner_opt=sgd",
  "--config.inner_lr=0.05",
  "--config.train.outer_eps=1e-3",
]

# Resumes a run through train_and_evaluate (jax.distributed from the METAGAN_*
# environment variables) and saves this process's final meta-parameters.
_RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    import metagan_jax as mg
    from experiments import omniglot
    from experiments.configs import tiny
    workdir, steps, streams, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    mg.parallel.initialize_distributed()
    c = tiny.get_config()
    c.methods, c.train.steps, c.train.sample_streams = "fomaml", steps, streams
    c.init = "random"
    c.loss = "ns"
    c.inner_opt, c.inner_lr, c.train.outer_eps = "sgd", 0.05, 1e-3  # as in _OMNIGLOT
    params = omniglot.train_and_evaluate(c, workdir, resume=True, mode="train",
                                         progress=False)["params"][("fomaml", 0)]
    np.savez(out, *jax.tree.leaves(params), processes=jax.process_count())
""")


def _run_two(cmds, env):
  procs = _start_all([(c, {**env, "METAGAN_PROCESS_ID": str(i)}) for i, c in enumerate(cmds)])
  for _, (code, out) in zip(procs, _wait_all(procs)):
    assert code == 0, out[-3000:]


@SLOW
def test_two_process_experiment_checkpoints_resume_and_match_one_process(tmp_path):
  """The experiment command over two processes, killed and resumed (``make test-all``).

  The default suite keeps the two-process meta-steps against one process
  (``test_two_processes_end_identical_and_equal_one_process``), one process's kill and
  exact resume (tests/test_experiments_train.py) and the shutdown tests.
  """
  # One CPU device per process: 2 devices in all, T = 2 tasks, one per process.
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(1)}
  work = str(tmp_path / "two")
  run_dir = os.path.join(work, "train", "fomaml_s0")
  # Steps 1-2 through the command line's --coordinator / --num_processes / --process_id.
  coord = f"localhost:{_free_port()}"
  _run_two(
    [
      _OMNIGLOT
      + [
        "--workdir",
        work,
        "--config.train.steps=2",
        "--coordinator",
        coord,
        "--num_processes",
        "2",
        "--process_id",
        str(i),
      ]
      for i in range(2)
    ],
    env,
  )
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["0", "1", "2"]
  with open(os.path.join(run_dir, "config.json")) as f:
    assert json.load(f)["processes"] == 2
  # Step 3: both processes restore step 2 from the orbax checkpoint and go on.
  env2 = {**env, "METAGAN_COORDINATOR": f"localhost:{_free_port()}", "METAGAN_NUM_PROCESSES": "2"}
  _run_two(
    [
      [sys.executable, "-c", _RESUME, work, "3", "0", str(tmp_path / f"p{i}.npz")] for i in range(2)
    ],
    env2,
  )
  # The same 3 steps in one process, drawing both processes' task streams.
  single = subprocess.run(
    [sys.executable, "-c", _RESUME, str(tmp_path / "one"), "3", "2", str(tmp_path / "single.npz")],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=HANG_TIMEOUT_S,
  )
  assert single.returncode == 0, single.stderr[-3000:]

  p0, p1, s = (np.load(tmp_path / f) for f in ("p0.npz", "p1.npz", "single.npz"))
  assert int(p0["processes"]) == 2 and int(s["processes"]) == 1
  keys = [k for k in p0.files if k.startswith("arr_")]
  assert len(keys) > 10
  for k in keys:
    np.testing.assert_array_equal(p0[k], p1[k])  # identical in both processes
    np.testing.assert_allclose(p0[k], s[k], rtol=1e-5, atol=1e-6)
  # Logs and images written once, by process 0, with the resumed run's lines appended.
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == [1, 2, 3]
  assert sorted(os.listdir(os.path.join(run_dir, "samples"))) == [
    "step_000000.png",
    "step_000002.png",
    "step_000003.png",
  ]
  assert len([f for f in os.listdir(run_dir) if f.startswith("events.out")]) == 2  # one per launch
