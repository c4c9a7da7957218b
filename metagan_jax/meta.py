"""Meta-learning algorithms as pure meta-steps over a batch of tasks.

Every algorithm is one pure function ``(state, tasks, key, config) -> (state,
metrics)``: the per-task computation is written once, the task axis is split
over a device mesh with ``jax.shard_map`` and each device's share runs through
``lax.map`` or ``jax.vmap`` (by default ``map`` on CPU, ``vmap`` on accelerators:
:mod:`metagan_jax.backend`); the outer update is any optax
transformation. ``meta_step`` dispatches on ``config.algorithm``; wrap it
with ``jax.jit`` outermost::

    step = jax.jit(functools.partial(metagan_jax.meta_step, config=config))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from metagan_jax import augment as augment_lib
from metagan_jax import backend, parallel
from metagan_jax.inner import AdaptConfig, MetaSGDParams, adapt_with_aux, check_samples
from metagan_jax.lopt import LOptMetaParams
from metagan_jax.models import GanParams
from metagan_jax.tasks import Tasks

__all__ = [
  "ALGORITHMS",
  "MetaConfig",
  "MetaState",
  "init",
  "metasgd_outer",
  "maml_objective",
  "per_task_gradient",
  "check_tasks",
  "meta_gradients",
  "meta_step",
]

PyTree = Any
#: The meta-learning algorithms :class:`MetaConfig` accepts.
ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """What a meta-step does (static under ``jit``).

  Attributes:
    adapt: the inner loop (:class:`AdaptConfig`).
    algorithm: ``maml`` (second order), ``fomaml``, ``reptile`` or ``metasgd``.
    outer_lr: learning rate of the default outer optimiser, Adam.
    outer_opt: any optax transformation instead of ``optax.adam(outer_lr)``.
      For Reptile, ``optax.sgd(beta)`` gives the classic update
      ``theta + beta * (mean theta' - theta)``.
    vectorize: ``"vmap"`` evaluates all tasks at once (batched matmuls);
      ``"map"`` runs them ``map_batch`` at a time inside the compiled step
      (``lax.map``), which on CPU is often faster and always uses less memory;
      ``"auto"`` (default) picks by the mesh's platform (:mod:`metagan_jax.backend`).
    map_batch: tasks per ``lax.map`` iteration when ``vectorize="map"``.
    meta_backward: ``"batched"`` computes both players' meta-gradients in one
      backward pass vmapped over the two cotangents; ``"sequential"`` runs two
      backward passes.
    mesh: the device mesh whose ``mesh_axis`` splits the task batch (see
      :mod:`metagan_jax.parallel`); ``None`` means every device of every
      process (one device: a mesh of one).
    mesh_axis: the name of the task axis of ``mesh``.
  """

  adapt: AdaptConfig
  algorithm: str = "maml"
  outer_lr: float = 1e-4
  outer_opt: optax.GradientTransformation | None = None
  vectorize: str = "auto"
  map_batch: int = 1
  meta_backward: str = "batched"
  mesh: jax.sharding.Mesh | None = None
  mesh_axis: str = parallel.TASK_AXIS

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"Unknown algorithm {self.algorithm!r}; choose from {list(ALGORITHMS)}.")
    if self.vectorize not in ("auto", "vmap", "map"):
      raise ValueError(
        f"MetaConfig.vectorize must be 'auto', 'vmap' or 'map', got {self.vectorize!r}."
      )
    if self.meta_backward not in ("batched", "sequential"):
      raise ValueError(
        f"MetaConfig.meta_backward must be 'batched' or 'sequential', got {self.meta_backward!r}."
      )
    if not isinstance(self.adapt, AdaptConfig):
      raise TypeError(f"MetaConfig.adapt must be an AdaptConfig, got {type(self.adapt).__name__}.")

  @property
  def optimizer(self) -> optax.GradientTransformation:
    return self.outer_opt if self.outer_opt is not None else optax.adam(self.outer_lr)

  def task_mesh(self) -> jax.sharding.Mesh:
    """The mesh the task batch is split over."""
    return self.mesh if self.mesh is not None else parallel.task_mesh(axis=self.mesh_axis)

  def resolved_vectorize(self) -> str:
    """``vectorize`` with ``"auto"`` resolved from the task mesh's platform."""
    return backend.resolve_vectorize(
      self.vectorize, backend.platform(list(self.task_mesh().devices.flat))
    )

  @property
  def inner(self) -> AdaptConfig:
    """The inner-loop config as this algorithm runs it."""
    return dataclasses.replace(self.adapt, first_order=self.algorithm == "fomaml")


@flax.struct.dataclass
class MetaState:
  """Everything a meta-training run carries from step to step.

  Attributes:
    params: the meta-parameters: :class:`GanParams` (MAML, first-order MAML,
      Reptile) or :class:`MetaSGDParams` (Meta-SGD: init and learning rates).
    opt_state: the outer optimiser's state.
    step: number of meta-steps taken.
  """

  params: PyTree
  opt_state: PyTree
  step: jax.Array


def init(key: jax.Array, config: MetaConfig) -> MetaState:
  """Initialises meta-parameters and the outer optimiser state."""
  params = config.adapt.model.init(key)
  if config.algorithm == "metasgd":
    lr = jax.tree.map(lambda p: jnp.full_like(p, config.adapt.inner_lr), params)
    params = MetaSGDParams(init=params, lr=lr)
  return MetaState(params, config.optimizer.init(params), jnp.zeros((), jnp.int32))


def metasgd_outer(
  init_opt: optax.GradientTransformation, rate_opt: optax.GradientTransformation
) -> optax.GradientTransformation:
  """An outer optimiser for Meta-SGD with its own transformation for the learned rates.

  The rates start at ``inner_lr`` (often 1e-3), so an Adam step of the size
  suited to the weights (also ~1e-3) changes a rate by ~100% per meta-step;
  give them a step a fraction of their size, for example
  ``metasgd_outer(optax.adam(1e-3), optax.adam(1e-5))``. The meta-gradient is
  unchanged; only how it is applied differs.

  Args:
    init_opt: applied to ``MetaSGDParams.init`` (the initialisation).
    rate_opt: applied to ``MetaSGDParams.lr`` (the per-parameter rates).

  Returns:
    An optax transformation over :class:`MetaSGDParams`.
  """

  def labels(params):
    if not isinstance(params, MetaSGDParams):
      raise TypeError(
        f"metasgd_outer expects MetaSGDParams, got {type(params).__name__}; "
        f"use it only with algorithm='metasgd'."
      )
    return MetaSGDParams(
      init=jax.tree.map(lambda _: "init", params.init), lr=jax.tree.map(lambda _: "rate", params.lr)
    )

  return optax.multi_transform({"init": init_opt, "rate": rate_opt}, labels)


def _init_params(meta_params) -> GanParams:
  return meta_params.init if isinstance(meta_params, MetaSGDParams) else meta_params


def _query_losses(model, loss, adapted: GanParams, query, key, augment: str = "", support=None):
  """Query meta-losses (L_D, L_G) of an adapted pair with one draw of query noise.

  With an ``augment`` policy, D sees the query and the fakes augmented (one draw
  for both, from the penalty key), as in the inner loop. A conditional model
  draws the fakes from the whole ``support`` and D judges every query image and
  fake beside it: the query images are the held-out targets of the support.
  """
  k_z, k_gp = jax.random.split(key)
  sets = model.support_sets(support, query.shape[0]) if model.conditional else None
  fake = model.generate(adapted.g, model.sample_z(k_z, query.shape[0], query.dtype), sets)
  real, fake_d = query, fake
  if augment:
    both = augment_lib.diff_augment(
      jax.random.fold_in(k_gp, 1), jnp.concatenate([query, fake]), augment
    )
    real, fake_d = both[: query.shape[0]], both[query.shape[0] :]
  l_d = loss.d_objective(model.critic(adapted.d, sets), real, fake_d, k_gp)
  l_g = loss.g_objective(model.discriminate(adapted.d, fake_d, sets))
  return jnp.stack([l_d, l_g])


def _own_player(grads_2x: PyTree) -> PyTree:
  """From gradients of [L_D, L_G] stacked on axis 0, keeps each player's own.

  Discriminator leaves take the gradient of the D meta-loss (index 0),
  generator leaves that of the G meta-loss (index 1).
  """
  if isinstance(grads_2x, GanParams):
    return GanParams(
      g=jax.tree.map(lambda x: x[1], grads_2x.g), d=jax.tree.map(lambda x: x[0], grads_2x.d)
    )
  if isinstance(grads_2x, MetaSGDParams):
    return MetaSGDParams(*(_own_player(f) for f in grads_2x))
  raise TypeError(f"Unexpected meta-parameter type {type(grads_2x).__name__}.")


def maml_objective(meta_params, support, query, key, config: MetaConfig):
  """The per-task MAML meta-objective ``[L_D, L_G]`` and the inner-loop aux.

  With ``(k_adapt, k_query) = jax.random.split(key)``: adapt on ``support``
  with ``k_adapt``; then with one draw of query noise from ``k_query``,
  ``L_D = d_loss(query, G'(z); D')`` and ``L_G = g_loss(G'(z); D')``.
  """
  inner = config.inner
  k_adapt, k_query = jax.random.split(key)
  adapted, aux = adapt_with_aux(meta_params, support, k_adapt, inner)
  losses = _query_losses(inner.model, inner.loss, adapted, query, k_query, inner.augment, support)
  return losses, aux


def _maml_task(meta_params, support, query, key, config: MetaConfig):
  """Per-task meta-gradient of MAML / first-order MAML / Meta-SGD."""

  def objective(mp):
    losses, aux = maml_objective(mp, support, query, key, config)
    return losses, (losses, aux)

  if config.meta_backward == "batched":
    # Reverse mode over both meta-losses at once: one forward pass, one
    # backward pass batched over the two cotangents; row i of each leaf is the
    # gradient of meta-loss i w.r.t. all meta-parameters.
    grads_2x, (query_losses, aux) = jax.jacrev(objective, has_aux=True)(meta_params)
  else:
    query_losses, vjp_fn, (_, aux) = jax.vjp(objective, meta_params, has_aux=True)
    # zeros_like keeps the cotangents' type (e.g. varying inside shard_map).
    basis = [jnp.zeros_like(query_losses).at[i].set(1) for i in range(2)]
    grads_2x = jax.tree.map(lambda *g: jnp.stack(g), *(vjp_fn(b)[0] for b in basis))
  return _own_player(grads_2x), query_losses, aux


def _reptile_task(meta_params, support, query, key, config: MetaConfig):
  """Per-task Reptile direction ``theta - theta'`` (query losses for monitoring)."""
  inner = config.inner
  k_adapt, k_query = jax.random.split(key)
  adapted, aux = adapt_with_aux(meta_params, support, k_adapt, inner)
  direction = jax.tree.map(jnp.subtract, meta_params, adapted)
  query_losses = _query_losses(inner.model, inner.loss, adapted, query, k_query, support=support)
  return direction, query_losses, aux


_PER_TASK: dict[str, Callable] = {
  "maml": _maml_task,
  "fomaml": _maml_task,
  "metasgd": _maml_task,
  "reptile": _reptile_task,
}


def per_task_gradient(meta_params, support, query, key, config: MetaConfig):
  """One task's meta-gradient (Reptile: direction), query losses and inner losses.

  ``meta_gradients`` is this function vmapped over tasks and averaged.
  """
  return _PER_TASK[config.algorithm](meta_params, support, query, key, config)


def check_tasks(tasks: Tasks, config: MetaConfig) -> None:
  """Raises a clear error unless ``tasks`` fits the model: float, ``[T, K|Q, *data_shape]``."""
  if not isinstance(tasks, Tasks):
    raise TypeError(f"tasks must be metagan_jax.Tasks(support, query), got {type(tasks).__name__}.")
  model = config.adapt.model
  for what, x in (("tasks.support", tasks.support), ("tasks.query", tasks.query)):
    if getattr(x, "ndim", 0) < 2:
      raise ValueError(
        f"{what} must be [T, N, {', '.join(map(str, model.data_shape))}], "
        f"got shape {getattr(x, 'shape', None)}."
      )
    check_samples(x[0], model, f"{what}[0]")
  if tasks.support.shape[0] != tasks.query.shape[0]:
    raise ValueError(
      f"tasks.support has {tasks.support.shape[0]} tasks but tasks.query has "
      f"{tasks.query.shape[0]}; both need the same leading task axis T."
    )
  if tasks.support.dtype != tasks.query.dtype:
    raise TypeError(
      f"tasks.support ({tasks.support.dtype}) and tasks.query "
      f"({tasks.query.dtype}) must share a dtype."
    )


def meta_gradients(meta_params, tasks: Tasks, key: jax.Array, config: MetaConfig):
  """The task-averaged meta-gradient (or Reptile direction) and per-task losses.

  Args:
    meta_params: :class:`GanParams` or :class:`MetaSGDParams`.
    tasks: support ``[T, K, ...]`` and query ``[T, Q, ...]``.
    key: PRNG key; task ``i`` uses ``jax.random.split(key, T)[i]``, split
      again into (adapt key, query-noise key).
    config: a :class:`MetaConfig`.

  Returns:
    ``(grads, aux)``: grads with the structure of ``meta_params``; aux holds
    ``query_losses [T, 2]`` (L_D, L_G) and the inner losses ``[T, inner_steps]``.
  """
  check_tasks(tasks, config)
  if isinstance(meta_params, LOptMetaParams):
    raise TypeError(
      "meta_step does not train LOptMetaParams (learned optimisers); use "
      "metagan_jax.lopt_train.meta_step (truncated backprop, ES or PES)."
    )
  if config.algorithm == "metasgd" and not isinstance(meta_params, MetaSGDParams):
    raise TypeError(
      "metasgd needs MetaSGDParams(init, lr); build the state with metagan_jax.init(key, config)."
    )
  mesh, axis = config.task_mesh(), config.mesh_axis
  parallel.check_divisible(tasks.support.shape[0], mesh, axis)
  keys = jax.random.split(key, tasks.support.shape[0])
  fn = functools.partial(per_task_gradient, config=config)
  vectorize = config.resolved_vectorize()

  def local(params, support, query, keys):
    # This device's share of the tasks. The replicated meta-parameters are
    # first marked device-varying: otherwise every gradient taken inside
    # (the inner loop's too) would be summed over devices as the transpose of
    # the implicit broadcast. The mean over all tasks is then the mean of the
    # equal-sized per-device means.
    params = jax.lax.pcast(params, axis, to="varying")
    if vectorize == "vmap":
      grads_T, q_T, aux_T = jax.vmap(fn, in_axes=(None, 0, 0, 0))(params, support, query, keys)
    else:
      grads_T, q_T, aux_T = jax.lax.map(
        lambda a: fn(params, *a),
        (support, query, keys),
        batch_size=config.map_batch if config.map_batch > 1 else None,
      )
    grads = jax.tree.map(lambda g: jax.lax.pmean(jnp.mean(g, axis=0), axis), grads_T)
    return grads, {"query_losses": q_T, **aux_T}

  sharded = jax.shard_map(
    local, mesh=mesh, in_specs=(P(), P(axis), P(axis), P(axis)), out_specs=(P(), P(axis))
  )
  return sharded(meta_params, tasks.support, tasks.query, keys)


def meta_step(state: MetaState, tasks: Tasks, key: jax.Array, config: MetaConfig):
  """One meta-update on a batch of tasks. Pure; ``jit`` it with ``config`` static.

  Algorithms (``config.algorithm``):

  * ``maml``: second-order MAML. Each task adapts ``(G, D)`` on its support set
    with :func:`metagan_jax.adapt`; then, on the query set with the adapted
    pair ``(G', D')`` and one draw of query noise ``z``, the discriminator's
    meta-loss is ``L_D(query, G'(z); D')`` and the generator's is
    ``L_G(G'(z); D')``. Each meta-gradient flows only to its own player's
    meta-parameters (the other player's are held fixed for that gradient) and
    is averaged over tasks; the optax outer optimiser applies it.
  * ``fomaml``: the same with inner gradients treated as constants.
  * ``reptile``: the outer optimiser is fed ``theta - mean_i theta'_i``
    (``theta'_i`` adapted on task i's support set), so ``optax.sgd(beta)``
    gives ``theta + beta * (mean_i theta'_i - theta)``.
  * ``metasgd``: MAML over :class:`MetaSGDParams`: the initialisation and one
    inner learning rate per parameter are meta-learned together.

  Args:
    state: a :class:`MetaState` from :func:`metagan_jax.init`.
    tasks: :class:`metagan_jax.Tasks`, support ``[T, K, ...]``, query ``[T, Q, ...]``.
    key: PRNG key for all latents of this step.
    config: a :class:`MetaConfig`.

  Returns:
    ``(new_state, metrics)``; metrics are scalars: inner losses of both players
    at the first and last inner step, query losses, and meta-gradient norms.
  """
  grads, aux = meta_gradients(state.params, tasks, key, config)
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  init_grads = _init_params(grads)
  metrics = {
    "d_inner_loss_first": jnp.mean(aux["d_loss"][:, 0]),
    "d_inner_loss_last": jnp.mean(aux["d_loss"][:, -1]),
    "g_inner_loss_first": jnp.mean(aux["g_loss"][:, 0]),
    "g_inner_loss_last": jnp.mean(aux["g_loss"][:, -1]),
    "d_query_loss": jnp.mean(aux["query_losses"][:, 0]),
    "g_query_loss": jnp.mean(aux["query_losses"][:, 1]),
    "d_grad_norm": optax.tree.norm(init_grads.d),
    "g_grad_norm": optax.tree.norm(init_grads.g),
  }
  if isinstance(params, MetaSGDParams):
    leaves = jax.tree.leaves(params.lr)
    metrics["mean_inner_lr"] = sum(jnp.sum(x) for x in leaves) / sum(x.size for x in leaves)
  return MetaState(params, opt_state, state.step + 1), metrics
