"""Meta-training learned optimisers: truncated backprop through GAN training, ES and PES.

Each of T tasks carries its own inner GAN training run (parameters, optimiser
states, step ``t``, its support and query sets) from meta-step to meta-step.
A meta-step advances every run by ``unroll`` inner steps with the current
learned optimisers and scores each step by a meta-loss on the task's query
set; a run that has reached ``horizon`` steps restarts from the
initialisation on a fresh task. Runs start staggered (task ``i`` at step
``(i * unroll) % horizon``) so a meta-batch mixes early and late phases of
training.

Estimators of the meta-gradient (``LOptTrainConfig.estimator``):

* ``"tbptt"``: truncated backpropagation through the ``unroll`` steps (the
  carried state is a constant); biased towards short horizons, low variance.
  With ``train_init=True`` the initialisation is learned too (its gradient
  flows in truncations that start a run).
* ``"es"``: antithetic evolution strategies over each truncation,
  ``mean (L(θ+ε) - L(θ-ε)) / (2σ²) ε``; the runs advance with θ itself.
* ``"pes"``: persistent ES (Vicol et al., 2021): each antithetic particle keeps
  its own run and the perturbations accumulated since that run started,
  which removes the truncation bias; unbiased for the whole-run loss.

The meta-loss of one inner step is the unbiased squared MMD between
generated samples and the task's query images in pixel space, with a sum of
Gaussian kernels (``bandwidths`` times the data dimension): a non-adversarial
measure of how close the adapted generator is to the new class, unlike the
GAN losses, which a weak discriminator makes small.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from metagan_jax import backend
from metagan_jax.inner import AdaptConfig, inner_noise, inner_step
from metagan_jax.lopt import LOptMetaParams, init_lopt_params
from metagan_jax.models import GanParams
from metagan_jax.tasks import Tasks

__all__ = [
  "ESTIMATORS",
  "LOptTrainConfig",
  "InnerRun",
  "LOptTrainState",
  "mmd2",
  "needs_restart",
  "unroll_run",
  "init",
  "es_gradient",
  "pes_gradient",
  "meta_gradients",
  "meta_step",
]

PyTree = Any
#: The meta-gradient estimators (truncated backprop, ES and persistent ES).
ESTIMATORS = ("tbptt", "es", "pes")


@dataclasses.dataclass(frozen=True)
class LOptTrainConfig:
  """How learned optimisers are meta-trained (static under ``jit``).

  Attributes:
    adapt: the inner loop: model, loss, ``d_steps``/``g_steps``, ``n_fake``,
      and ``lopt_spec`` (``inner_steps`` is unused: see horizon/unroll).
    horizon: inner steps of one run before it restarts on a new task.
    unroll: inner steps per meta-step (truncation length); divides horizon.
    estimator: ``"tbptt"``, ``"es"`` or ``"pes"``.
    sigma: ES/PES perturbation scale.
    num_pairs: ES/PES antithetic pairs per task.
    train_init: also meta-learn the initialisation (``tbptt`` only).
    outer_lr: Adam learning rate of the default meta-update.
    clip_norm: the default meta-update clips the meta-gradient to this global
      norm, and skips (``optax.apply_if_finite``) non-finite ones.
    outer_opt: any optax transformation for the meta-update instead.
    bandwidths: Gaussian kernel widths of the MMD meta-loss, as multiples of the
      data dimension (``k(x, y) = sum_s exp(-|x - y|^2 / (2 s D))``).
    vectorize: ``"map"`` (tasks one after another inside the step; faster on
      CPU, less memory), ``"vmap"``, or ``"auto"`` (default: by the default
      backend's platform, :mod:`metagan_jax.backend`).
  """

  adapt: AdaptConfig
  horizon: int = 50
  unroll: int = 10
  estimator: str = "tbptt"
  sigma: float = 0.01
  num_pairs: int = 2
  train_init: bool = False
  outer_lr: float = 1e-3
  clip_norm: float = 1.0
  outer_opt: optax.GradientTransformation | None = None
  bandwidths: tuple[float, ...] = (0.05, 0.2, 1.0)
  vectorize: str = "auto"

  def __post_init__(self):
    if not isinstance(self.adapt, AdaptConfig):
      raise TypeError(
        f"LOptTrainConfig.adapt must be an AdaptConfig, got {type(self.adapt).__name__}."
      )
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"Unknown estimator {self.estimator!r}; choose from {list(ESTIMATORS)}.")
    for name in ("horizon", "unroll", "num_pairs"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"LOptTrainConfig.{name} must be an integer >= 1, got {v!r}.")
    if self.horizon % self.unroll:
      raise ValueError(
        f"horizon={self.horizon} must be a multiple of unroll={self.unroll} "
        f"(a truncation never spans two runs)."
      )
    if self.train_init and self.estimator != "tbptt":
      raise ValueError(
        "train_init=True needs estimator='tbptt' (ES over every GAN weight "
        "would be hopelessly noisy)."
      )
    if self.vectorize not in ("auto", "map", "vmap"):
      raise ValueError(f"vectorize must be 'auto', 'map' or 'vmap', got {self.vectorize!r}.")

  def resolved_vectorize(self) -> str:
    """``vectorize`` with ``"auto"`` resolved from the default backend's platform."""
    return backend.resolve_vectorize(self.vectorize, backend.platform())

  @property
  def optimizer(self) -> optax.GradientTransformation:
    if self.outer_opt is not None:
      return self.outer_opt
    # Unrolled GAN training occasionally blows up a meta-gradient: clip, and skip
    # non-finite ones rather than poison Adam's moments.
    return optax.apply_if_finite(
      optax.chain(optax.clip_by_global_norm(self.clip_norm), optax.adam(self.outer_lr)),
      max_consecutive_errors=50,
    )

  @property
  def particles(self) -> int:
    """Inner runs per task; 1, or 2 * num_pairs for PES (the + and - of each pair)."""
    return 2 * self.num_pairs if self.estimator == "pes" else 1


class InnerRun(NamedTuple):
  """One inner GAN training run (stacked over tasks, and particles for PES)."""

  params: GanParams
  g_state: PyTree
  d_state: PyTree
  t: jax.Array
  support: jax.Array
  query: jax.Array


@flax.struct.dataclass
class LOptTrainState:
  """Everything meta-training carries between meta-steps.

  Attributes:
    params: :class:`LOptMetaParams` (initialisation and optimisers).
    opt_state: the outer optimiser's state.
    runs: :class:`InnerRun` with leading axes ``[T]`` (``[T, 2P]`` for PES).
    pes_acc: PES: perturbations of the optimiser weights accumulated since
      each particle pair's run started, ``[T, P, ...]``; else None.
    step: meta-steps taken.
  """

  params: LOptMetaParams
  opt_state: PyTree
  runs: InnerRun
  pes_acc: PyTree
  step: jax.Array


def mmd2(x_NxD: jax.Array, y_MxD: jax.Array, bandwidths=(0.05, 0.2, 1.0)) -> jax.Array:
  """Unbiased squared MMD with a sum of Gaussian kernels (widths scaled by the dimension D)."""
  x, y = x_NxD.reshape(x_NxD.shape[0], -1), y_MxD.reshape(y_MxD.shape[0], -1)
  dim = x.shape[1]

  def k(a, b):
    d2 = jnp.maximum(jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None] - 2 * a @ b.T, 0)
    return sum(jnp.exp(-d2 / (2 * s * dim)) for s in bandwidths)

  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
  off = lambda a, c: (jnp.sum(a) - jnp.trace(a)) / (c * (c - 1))
  return off(kxx, n) + off(kyy, m) - 2 * jnp.mean(kxy)


def _opt_part(meta: LOptMetaParams):
  return (meta.d, meta.g)


def _with_opt(meta: LOptMetaParams, opt_part) -> LOptMetaParams:
  return LOptMetaParams(init=meta.init, d=opt_part[0], g=opt_part[1])


def _fresh_run(meta: LOptMetaParams, support, query, t, config: LOptTrainConfig) -> InnerRun:
  d_opt, g_opt = meta.optimizers(config.adapt.lopt_spec)
  init = meta.init
  return InnerRun(
    init, g_opt.init(init.g), d_opt.init(init.d), jnp.asarray(t, jnp.int32), support, query
  )


def needs_restart(run: InnerRun, config: LOptTrainConfig) -> jax.Array:
  """True when a run has reached the horizon or diverged (non-finite parameters)."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(run.params)]))
  return (run.t >= config.horizon) | ~finite


def unroll_run(
  meta: LOptMetaParams, run: InnerRun, fresh: Tasks, key: jax.Array, config: LOptTrainConfig
):
  """Advances one run by ``config.unroll`` inner steps; returns ``(mean meta-loss, new run)``.

  A run that :func:`needs_restart` first restarts from ``meta.init`` on
  ``fresh``'s support/query (one task, ``[K, ...]`` / ``[Q, ...]``). The
  carried run is a constant (truncation); the meta-loss is differentiable
  w.r.t. the optimisers, and w.r.t. the initialisation in a truncation that
  starts a run (when ``config.train_init``).
  """
  ac = config.adapt
  if not config.train_init:
    meta = LOptMetaParams(jax.lax.stop_gradient(meta.init), meta.d, meta.g)
  run = jax.lax.stop_gradient(run)
  reset = needs_restart(run, config)
  new = _fresh_run(meta, fresh.support, fresh.query, 0, config)
  run = jax.tree.map(lambda a, b: jnp.where(reset, a, b), new, run)
  d_opt, g_opt = meta.optimizers(ac.lopt_spec)
  n_fake = ac.n_fake or run.support.shape[0]
  k_inner, k_meta = jax.random.split(key)
  noise = inner_noise(
    k_inner, dataclasses.replace(ac, inner_steps=config.unroll), n_fake, run.support.dtype
  )
  z_meta = ac.model.sample_z(k_meta, config.unroll * run.query.shape[0], run.support.dtype)
  z_meta = z_meta.reshape(config.unroll, run.query.shape[0], -1)
  step = functools.partial(inner_step, support=run.support, d_opt=d_opt, g_opt=g_opt, config=ac)

  def body(carry, xs):
    carry, _ = step(carry, xs[:2])
    return carry, mmd2(ac.model.generate(carry[0], xs[2]), run.query, config.bandwidths)

  carry = (run.params.g, run.params.d, run.g_state, run.d_state)
  carry, losses = jax.lax.scan(body, carry, (noise.z, noise.gp_keys, z_meta))
  out = InnerRun(
    GanParams(g=carry[0], d=carry[1]),
    carry[2],
    carry[3],
    run.t + config.unroll,
    run.support,
    run.query,
  )
  return jnp.mean(losses), out


def _over_tasks(fn: Callable, config: LOptTrainConfig, *xs):
  if config.resolved_vectorize() == "vmap":
    return jax.vmap(fn)(*xs)
  return jax.lax.map(lambda a: fn(*a), xs)


def init(
  key: jax.Array,
  tasks: Tasks,
  config: LOptTrainConfig,
  init_params: GanParams | None = None,
  hidden: tuple[int, ...] = (32,),
  lr: float | None = None,
) -> LOptTrainState:
  """Meta-parameters (optimisers equal to SGD(lr) at first), outer state and staggered runs.

  Args:
    key: PRNG key (the optimisers' MLP weights; and ``init_params`` if None).
    tasks: the first T tasks (support ``[T, K, ...]``, query ``[T, Q, ...]``).
    config: a :class:`LOptTrainConfig`.
    init_params: the GAN initialisation (default: ``model.init``).
    hidden: the MLP's hidden sizes.
    lr: the SGD coefficient the optimisers start from (default ``adapt.inner_lr``).
  """
  k_init, k_d, k_g = jax.random.split(key, 3)
  ac = config.adapt
  init_params = init_params if init_params is not None else ac.model.init(k_init)
  lr = ac.inner_lr if lr is None else lr
  meta = LOptMetaParams(
    init=init_params,
    d=init_lopt_params(k_d, hidden, lr, ac.lopt_spec),
    g=init_lopt_params(k_g, hidden, lr, ac.lopt_spec),
  )
  T = tasks.support.shape[0]
  t0 = (jnp.arange(T) * config.unroll) % config.horizon
  runs = jax.vmap(lambda s, q, t: _fresh_run(meta, s, q, t, config))(tasks.support, tasks.query, t0)
  pes_acc = None
  if config.estimator == "pes":
    P2 = config.particles
    runs = jax.tree.map(lambda x: jnp.repeat(x[:, None], P2, axis=1), runs)
    pes_acc = jax.tree.map(
      lambda x: jnp.zeros((T, config.num_pairs, *x.shape), x.dtype), _opt_part(meta)
    )
  return LOptTrainState(meta, config.optimizer.init(meta), runs, pes_acc, jnp.zeros((), jnp.int32))


def _perturbations(key, tree, num_pairs: int, sigma: float):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef,
    [sigma * jax.random.normal(k, (num_pairs, *x.shape), x.dtype) for k, x in zip(keys, leaves)],
  )


def es_gradient(
  loss_fn: Callable, theta: PyTree, key: jax.Array, sigma: float, num_pairs: int
) -> tuple[PyTree, jax.Array]:
  """Antithetic ES estimate of the gradient of ``E_ε loss_fn(θ + ε)``, ``ε ~ N(0, σ² I)``.

  ``mean_p (loss(θ+ε_p) - loss(θ-ε_p)) / (2σ²) ε_p`` over ``num_pairs`` pairs;
  unbiased for that Gaussian-smoothed loss (for a quadratic, the true gradient).

  Returns:
    ``(gradient estimate, mean of loss(θ±ε))``.
  """
  eps = _perturbations(key, theta, num_pairs, sigma)
  signed = jax.tree.map(lambda t, e: t + jnp.stack([e, -e], 1), theta, eps)  # [P, 2, ...]
  losses = jax.vmap(jax.vmap(loss_fn))(signed)
  w = (losses[:, 0] - losses[:, 1]) / (2 * sigma**2)
  grad = jax.tree.map(lambda e: jnp.tensordot(w, e, 1) / num_pairs, eps)
  return grad, jnp.mean(losses)


def pes_gradient(
  unroll_fn: Callable,
  theta: PyTree,
  states: PyTree,
  acc: PyTree,
  starts_run: jax.Array,
  key: jax.Array,
  sigma: float,
):
  """One persistent-ES step over antithetic particle pairs (Vicol et al., 2021).

  Args:
    unroll_fn: ``(θ, state) -> (loss, new state)``, one truncation of one particle.
    theta: the parameters.
    states: particle states with leading axes ``[P, 2]`` (pair, sign).
    acc: accumulated perturbations ``[P, ...]`` since each pair's run started.
    starts_run: ``[P]`` bool, True where this truncation starts a new run
      (its accumulated perturbation restarts from this one).
    key: PRNG key.
    sigma: perturbation scale.

  Returns:
    ``(gradient estimate, mean loss, new states, new acc)``.
  """
  num_pairs = starts_run.shape[0]
  eps = _perturbations(key, theta, num_pairs, sigma)
  mask = lambda e: starts_run.reshape((-1,) + (1,) * (e.ndim - 1))
  acc = jax.tree.map(lambda a, e: jnp.where(mask(e), e, a + e), acc, eps)
  signed = jax.tree.map(lambda t, e: t + jnp.stack([e, -e], 1), theta, eps)
  losses, states = jax.vmap(jax.vmap(unroll_fn))(signed, states)
  w = (losses[:, 0] - losses[:, 1]) / (2 * sigma**2)
  grad = jax.tree.map(lambda a: jnp.tensordot(w, a, 1) / num_pairs, acc)
  return grad, jnp.mean(losses), states, acc


def _finite_mean(grads_T: PyTree, losses_T: jax.Array):
  """Means over the tasks whose loss and gradient are finite; and the fraction that were not.

  A run that diverged in this truncation (it restarts next time) gives no
  gradient, instead of turning the whole meta-step into NaN.
  """
  ok = jnp.isfinite(losses_T)
  for g in jax.tree.leaves(grads_T):
    ok &= jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
  n = jnp.maximum(jnp.sum(ok), 1)
  mask = lambda x: jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)
  grads = jax.tree.map(lambda g: jnp.sum(mask(g), 0) / n.astype(g.dtype), grads_T)
  return grads, jnp.sum(mask(losses_T)) / n, 1 - jnp.mean(ok.astype(jnp.float32))


def meta_gradients(state: LOptTrainState, tasks: Tasks, key: jax.Array, config: LOptTrainConfig):
  """Task-averaged meta-gradient estimate, the new runs and PES sums, and statistics.

  ``tasks`` supplies each run's next task (used by runs that restart now).
  Tasks whose loss or gradient is non-finite (a diverged inner run) are left
  out of the means.

  Returns:
    ``(grads, runs, pes_acc, {"meta_loss", "diverged"})``.
  """
  meta = state.params
  T = tasks.support.shape[0]
  keys = jax.random.split(key, T)

  if config.estimator == "tbptt":

    def task(run, s, q, k):
      (loss, run), g = jax.value_and_grad(unroll_run, has_aux=True)(
        meta, run, Tasks(s, q), k, config
      )
      return g, loss, run

    grads, losses, runs = _over_tasks(task, config, state.runs, tasks.support, tasks.query, keys)
    grads, loss, diverged = _finite_mean(grads, losses)
    return grads, runs, None, {"meta_loss": loss, "diverged": diverged}

  zero_init = jax.tree.map(jnp.zeros_like, meta.init)
  theta = _opt_part(meta)

  def loss_of(th, run, s, q, k):
    return unroll_run(_with_opt(meta, th), run, Tasks(s, q), k, config)

  if config.estimator == "es":

    def task(run, s, q, k):
      k_es, k_run = jax.random.split(k)
      # Every particle sees the same inner noise (common random numbers).
      g, _ = es_gradient(
        lambda th: loss_of(th, run, s, q, k_run)[0], theta, k_es, config.sigma, config.num_pairs
      )
      loss, run = loss_of(theta, run, s, q, k_run)
      return g, loss, run

    grads, losses, runs = _over_tasks(task, config, state.runs, tasks.support, tasks.query, keys)
    acc = None
  else:
    P = config.num_pairs

    def task(runs_P2, acc_P, s, q, k):
      k_es, k_run = jax.random.split(k)
      runs_Px2 = jax.tree.map(lambda x: x.reshape(P, 2, *x.shape[1:]), runs_P2)
      # A pair restarts together (even if only one particle diverged), so its
      # two runs stay antithetic and its perturbation sum starts afresh.
      starts = jnp.any(jax.vmap(jax.vmap(lambda r: needs_restart(r, config)))(runs_Px2), axis=1)
      runs_Px2 = runs_Px2._replace(
        t=jnp.where(starts[:, None], config.horizon, runs_Px2.t).astype(runs_Px2.t.dtype)
      )
      g, loss, runs_Px2, acc_P = pes_gradient(
        lambda th, r: loss_of(th, r, s, q, k_run),
        theta,
        runs_Px2,
        acc_P,
        starts,
        k_es,
        config.sigma,
      )
      return g, loss, jax.tree.map(lambda x: x.reshape(2 * P, *x.shape[2:]), runs_Px2), acc_P

    grads, losses, runs, acc = _over_tasks(
      task, config, state.runs, state.pes_acc, tasks.support, tasks.query, keys
    )
  grads, loss, diverged = _finite_mean(grads, losses)
  return (
    _with_opt(LOptMetaParams(zero_init, None, None), grads),
    runs,
    acc,
    {"meta_loss": loss, "diverged": diverged},
  )


def meta_step(state: LOptTrainState, tasks: Tasks, key: jax.Array, config: LOptTrainConfig):
  """One meta-update of the learned optimisers (and initialisation). Pure; ``jit`` it.

  Returns:
    ``(new state, metrics)``: the mean meta-loss (MMD² per inner step over
    this truncation, finite tasks), the fraction of diverged tasks, the
    meta-gradient norm and the optimisers' SGD rates.
  """
  grads, runs, acc, stats = meta_gradients(state, tasks, key, config)
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    **stats,
    "grad_norm": optax.tree.norm(_opt_part(grads)),
    "lr_d": params.d.lr,
    "lr_g": (params.g or params.d).lr,
  }
  return LOptTrainState(params, opt_state, runs, acc, state.step + 1), metrics
