"""A real two-process run on localhost (CPU collectives through gloo).

Both processes end with bitwise-identical parameters, equal (to float32
rounding) to a one-process run over the same tasks.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

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


def test_two_processes_end_identical_and_equal_one_process(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  coord = f"localhost:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / f"p{i}.npz"), str(i),
                             "2", coord], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  single = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path / "single.npz"), "0", "1",
                           "-"], cwd=ROOT, env={**env, "XLA_FLAGS": ""}, capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  p0, p1, s = (np.load(tmp_path / f) for f in ("p0.npz", "p1.npz", "single.npz"))
  assert int(p0["devices"]) == 4 and int(p0["processes"]) == 2
  assert int(s["devices"]) == 1 and int(s["processes"]) == 1
  keys = [k for k in p0.files if k.startswith("arr_")]
  assert keys
  for k in keys:
    np.testing.assert_array_equal(p0[k], p1[k])  # identical in both processes
    np.testing.assert_allclose(p0[k], s[k], rtol=1e-5, atol=1e-6)
