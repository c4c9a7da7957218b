"""A meta-step sharded over 4 CPU devices equals the single-device meta-step.

XLA's device count is fixed when JAX starts, so each check runs in a fresh
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import HANG_TIMEOUT_S, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    import metagan_jax as mg
    from metagan_jax import parallel

    algorithm, T, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert jax.device_count() == 4, jax.devices()
    model = mg.models.mlp(data_dim=2, z_dim=3, hidden=(16,))
    if kind == "nnx":  # the same pair as flax NNX modules (parameters: plain nested dicts)
      from flax import nnx
      class MLP(nnx.Module):
        def __init__(self, din, dout, rngs):
          self.fc0, self.fc1 = nnx.Linear(din, 16, rngs=rngs), nnx.Linear(16, dout, rngs=rngs)
        def __call__(self, x):
          h = self.fc1(jax.nn.leaky_relu(self.fc0(x), 0.2))
          return h[:, 0] if h.shape[1] == 1 else h
      model = mg.GanModel.from_nnx(lambda r: MLP(3, 2, r), lambda r: MLP(2, 1, r),
                                   z_dim=3, data_shape=(2,))
    tasks, _ = mg.toy.RingMixtures().sample_tasks(jax.random.key(0), T, 6, 5)

    def run(mesh):
      cfg = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=2, inner_lr=0.1),
                          algorithm=algorithm, outer_lr=1e-2, mesh=mesh)
      state = mg.init(jax.random.key(1), cfg)
      step = jax.jit(functools.partial(mg.meta_step, config=cfg))
      for i in range(2):
        state, metrics = step(state, parallel.shard_tasks(tasks, cfg.task_mesh()), jax.random.key(i))
      return state.params, metrics

    if T % 4:
      cfg = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=2), algorithm=algorithm)
      errors = []
      for call in (lambda: mg.meta_step(mg.init(jax.random.key(1), cfg), tasks, jax.random.key(0), cfg),
                   lambda: parallel.shard_tasks(tasks, cfg.task_mesh())):
        try:
          call()
          errors.append(None)
        except ValueError as e:
          errors.append(str(e))
      print(json.dumps({"errors": errors})); sys.exit(0)
    sharded, m4 = run(None)                      # default mesh: all 4 devices
    single, m1 = run(parallel.task_mesh(jax.devices()[:1]))
    spec = jax.tree.leaves(sharded)[0].sharding
    sharded, single = parallel.to_host(sharded), parallel.to_host(single)
    init = parallel.to_host(mg.init(jax.random.key(1), mg.MetaConfig(mg.AdaptConfig(model),
                                                                     algorithm=algorithm)).params)
    err = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
              for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)))
    moved = max(float(np.max(np.abs(a - b)))
                for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(init)))
    print(json.dumps({"rel_err": err, "moved": moved, "replicated": spec.is_fully_replicated,
                      "d_query": [float(m4["d_query_loss"]), float(m1["d_query_loss"])]}))
""")


def _run(algorithm, T, kind="linen"):
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(4)}
  out = subprocess.run(
    [sys.executable, "-c", _SCRIPT, algorithm, str(T), kind],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=HANG_TIMEOUT_S,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("algorithm,kind", [("maml", "linen"), ("reptile", "nnx")])
def test_sharded_meta_step_equals_single_device(algorithm, kind):
  r = _run(algorithm, 8, kind)
  assert r["moved"] > 1e-4  # the meta-steps did change the parameters
  assert r["rel_err"] < 1e-5
  assert r["replicated"]
  assert abs(r["d_query"][0] - r["d_query"][1]) < 1e-5


def test_task_batch_not_divisible_by_devices_is_a_clear_error():
  step_error, shard_error = _run("maml", 6)["errors"]
  assert "T = 6 tasks" in step_error and "4 devices" in step_error, step_error
  assert "6 tasks" in shard_error and "4 devices" in shard_error, shard_error
