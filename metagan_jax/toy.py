"""A toy task family: 2-D Gaussian mixtures on a ring, and MMD to score samples.

Each task is a mixture of ``n_modes`` equal-weight isotropic Gaussians whose
means sit evenly on a circle; tasks differ by the ring's rotation, radius and
the modes' standard deviation. A meta-learned GAN should learn "a ring of
modes" and, from a few support points, snap to the task's rotation and size.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metagan_jax.tasks import Tasks

__all__ = [
  "RingTask",
  "RingMixtures",
  "mmd2",
  "adaptation_mmd",
]


class RingTask(NamedTuple):
  """Parameters of one task: ``rotation`` (radians), ``radius``, ``scale`` (mode std)."""

  rotation: jax.Array
  radius: jax.Array
  scale: jax.Array


@dataclasses.dataclass(frozen=True)
class RingMixtures:
  """The family of ring-of-Gaussians tasks.

  Attributes:
    n_modes: modes per ring.
    radius: (low, high) of the uniformly drawn ring radius.
    scale: (low, high) of the uniformly drawn mode standard deviation.
  """

  n_modes: int = 8
  radius: tuple[float, float] = (1.0, 2.0)
  scale: tuple[float, float] = (0.05, 0.15)

  def sample_task(self, key: jax.Array) -> RingTask:
    """Draws one task's parameters."""
    k_rot, k_rad, k_sc = jax.random.split(key, 3)
    rotation = jax.random.uniform(k_rot, (), maxval=2 * jnp.pi / self.n_modes)
    radius = jax.random.uniform(k_rad, (), minval=self.radius[0], maxval=self.radius[1])
    scale = jax.random.uniform(k_sc, (), minval=self.scale[0], maxval=self.scale[1])
    return RingTask(rotation, radius, scale)

  def sample(self, key: jax.Array, task: RingTask, n: int) -> jax.Array:
    """Draws ``n`` points ``[n, 2]`` from one task's mixture."""
    k_mode, k_noise = jax.random.split(key)
    mode = jax.random.randint(k_mode, (n,), 0, self.n_modes)
    angle = task.rotation + 2 * jnp.pi * mode / self.n_modes
    mean = task.radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return mean + task.scale * jax.random.normal(k_noise, (n, 2))

  def sample_tasks(self, key: jax.Array, num_tasks: int, k: int, q: int) -> tuple[Tasks, RingTask]:
    """Draws a batch of tasks with ``k`` support and ``q`` query points each.

    Returns:
      ``(Tasks(support [T, k, 2], query [T, q, 2]), RingTask with [T] leaves)``.
    """
    # One compiled program: op by op, a batch costs ~50 ms of dispatch on CPU.
    return _sample_tasks(self, key, num_tasks, k, q)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _sample_tasks(
  family: RingMixtures, key: jax.Array, num_tasks: int, k: int, q: int
) -> tuple[Tasks, RingTask]:
  k_task, k_pts = jax.random.split(key)
  task = jax.vmap(family.sample_task)(jax.random.split(k_task, num_tasks))
  pts = jax.vmap(lambda kk, t: family.sample(kk, t, k + q))(
    jax.random.split(k_pts, num_tasks), task
  )
  return Tasks(support=pts[:, :k], query=pts[:, k:]), task


def mmd2(x: jax.Array, y: jax.Array, bandwidths=(0.1, 0.3, 1.0)) -> jax.Array:
  """Unbiased squared MMD between samples ``x [n, d]`` and ``y [m, d]``.

  Uses a sum of Gaussian kernels ``exp(-|a-b|^2 / (2 h^2))`` over ``bandwidths``,
  so both fine mode structure and the overall scale count.
  """

  def kernel(a, b):
    d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return sum(jnp.exp(-d2 / (2.0 * h * h)) for h in bandwidths)

  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
  syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
  return sxx + syy - 2.0 * jnp.mean(kxy)


def adaptation_mmd(
  params,
  family: RingMixtures,
  config,
  key: jax.Array,
  num_tasks: int = 32,
  k: int = 16,
  n_eval: int = 512,
) -> jax.Array:
  """Per-task MMD^2 between an adapted generator and each held-out task's mixture.

  For each of ``num_tasks`` fresh tasks: adapt ``params`` (any meta-parameters
  :func:`metagan_jax.adapt` accepts) on ``k`` support points with ``config``
  (an :class:`metagan_jax.AdaptConfig`), draw ``n_eval`` samples from the
  adapted generator and ``n_eval`` from the task, and score them with
  :func:`mmd2`. Returns ``[num_tasks]``; lower is better.
  """
  from metagan_jax.inner import adapt  # local: toy is imported by the package root

  k_tasks, k_adapt, k_z, k_true = jax.random.split(key, 4)
  tasks, task_params = family.sample_tasks(k_tasks, num_tasks, k, 0)
  model = config.model

  def one(support, tp, ka, kz, kt):
    adapted = adapt(params, support, ka, config)
    fake = model.generate(adapted.g, model.sample_z(kz, n_eval))
    return mmd2(fake, family.sample(kt, tp, n_eval))

  split = lambda kk: jax.random.split(kk, num_tasks)
  return jax.vmap(one)(tasks.support, task_params, split(k_adapt), split(k_z), split(k_true))
