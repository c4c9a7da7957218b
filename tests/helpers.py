"""Shared fixtures for the core tests: a tiny float64 MLP GAN problem."""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metagan_jax as mg


def tiny_model(activation="tanh"):
  # Smooth activations keep central differences exact to ~eps^2.
  return mg.models.mlp(data_dim=2, z_dim=3, hidden=(8,), activation=activation)


def to64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def tiny_tasks(key, t=1, k=4, q=3, dtype=jnp.float64):
  tasks, _ = mg.toy.RingMixtures().sample_tasks(key, t, k, q)
  return jax.tree.map(lambda x: x.astype(dtype), tasks)


def random_direction(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


def tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_axpy(alpha, x, y):
  return jax.tree.map(lambda a, b: alpha * a + b, x, y)


def tree_max_rel_err(a, b):
  num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
  return num / den


def central_difference(f, x, v, eps=1e-5):
  """(f(x + eps v) - f(x - eps v)) / (2 eps), f scalar-valued on pytrees."""
  return (f(tree_axpy(eps, v, x)) - f(tree_axpy(-eps, v, x))) / (2 * eps)


def tree_allclose(a, b, rtol, atol=0.0):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def xla_flags(devices: int | None = None) -> str:
  """``XLA_FLAGS`` for a subprocess: the suite's own flags, plus ``devices`` host devices."""
  from tests.conftest import TEST_XLA_FLAGS  # pylint: disable=g-import-not-at-top

  flags = [
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  if TEST_XLA_FLAGS not in flags:
    flags.append(TEST_XLA_FLAGS)
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(flags)


# A deadline that only catches a hang: every subprocess and wait in the suite takes
# under 3 minutes alone on 2 cores, so this holds on a machine many times slower
# and busy with the other xdist worker.
HANG_TIMEOUT_S = 1800


# Tests over a minute each that run a whole experiment or a learning curve, where cheaper
# tests check the same code (named in each test's docstring). `make test` (CI) skips them so
# that the suite and the docs fit CI's 20 minutes on 2 cores; `make test-all` runs them.
SLOW = pytest.mark.skipif(
  not os.environ.get("METAGAN_SLOW_TESTS"),
  reason="a whole experiment (over a minute on 2 cores); make test-all (METAGAN_SLOW_TESTS=1) runs it",
)


def kill_when_written(proc, path: str) -> None:
  """SIGKILLs the running ``proc`` once ``path`` exists (fails if it exits or hangs first)."""
  deadline = time.time() + HANG_TIMEOUT_S
  while not os.path.exists(path):
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline, f"{path} never appeared"
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
