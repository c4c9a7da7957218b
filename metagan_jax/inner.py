"""The inner loop: adapt a GAN pair to one task's support set.

``adapt`` is pure and differentiable with respect to the meta-parameters, so
the same function serves second-order MAML (differentiate through it),
first-order MAML (inner gradients are constants), Reptile (use its output) and
Meta-SGD (per-parameter learning rates as meta-parameters).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metagan_jax import augment as augment_lib
from metagan_jax import losses as losses_lib
from metagan_jax.lopt import LOptMetaParams, LOptSpec
from metagan_jax.models import GanModel, GanParams

__all__ = [
  "MetaSGDParams",
  "per_parameter_sgd",
  "AdaptConfig",
  "InnerNoise",
  "inner_noise",
  "check_samples",
  "trainable_mask",
  "leave_one_out_sets",
  "inner_step",
  "adapt_with_aux",
  "adapt_prefix",
  "adapt",
]

PyTree = Any


class MetaSGDParams(NamedTuple):
  """Meta-SGD meta-parameters: an initialisation and a learning rate per parameter."""

  init: GanParams
  lr: GanParams


def per_parameter_sgd(lr_tree: PyTree) -> optax.GradientTransformation:
  """SGD with one (meta-learnable, possibly traced) learning rate per parameter.

  ``update = -lr * grad`` leaf by leaf; ``lr_tree`` has the parameters' structure.
  Meta-SGD (Li et al., 2017) is this optimiser with ``lr_tree`` meta-learned.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda g, a: -a * g, updates, lr_tree), state

  return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
  """How a GAN pair adapts to one task (static under ``jit``).

  Attributes:
    model: the generator/discriminator pair.
    inner_steps: number of inner steps; each is ``d_steps`` discriminator
      updates (real = support, fake = G(z), fresh z each time) followed by
      ``g_steps`` generator updates against the just-updated discriminator.
    d_steps: discriminator updates per inner step.
    g_steps: generator updates per inner step.
    inner_lr: learning rate of the default inner optimiser, ``optax.sgd``; for
      Meta-SGD, the initial value of every per-parameter learning rate.
    inner_opt: any optax transformation used for both players instead of
      SGD(inner_lr). For Adam, pass ``optax.adam(lr, eps_root=1e-12)`` or
      similar: ``eps_root > 0`` keeps the square root differentiable at zero,
      which second-order MAML needs.
    d_opt: the discriminator's override of ``inner_opt``.
    g_opt: the generator's override of ``inner_opt``.
    loss: a preset name (``ns``, ``hinge``, ``wasserstein``, ``wgan-gp``,
      ``ns-r1``) or a :class:`metagan_jax.GanLoss`.
    n_fake: generated samples per update; defaults to the support size. A
      multiple r K of the support size K repeats the support r times in D's
      loss, which keeps its real term and pairs every sample in WGAN-GP's penalty.
    unroll: unroll the inner loop in Python (inside ``jit``) instead of
      ``lax.scan``. Compiles slower for long loops, may run faster on CPU.
    remat: wrap each inner step in ``jax.checkpoint``; memory of
      second-order MAML then grows by one step's carry per step instead of all
      its activations.
    first_order: treat inner gradients as constants (first-order MAML).
    second_order_steps: differentiate through the inner gradients of only the
      last ``second_order_steps`` inner steps; the earlier steps' inner gradients
      are constants, as in first-order MAML, so the backward pass crosses them
      elementwise. ``None`` (default): every step, exact second order. An
      approximation of the MAML meta-gradient ("truncated second order");
      ``0`` is first-order MAML, ``inner_steps`` exact MAML.
    g_trainable / d_trainable: which of each player's parameters adapt:
      ``None`` (all), ``"none"``, or comma-separated path prefixes such as
      ``"mapping"`` or ``"synthesis/out,synthesis/fc"`` (paths join the
      parameter dict's keys with ``/``). Frozen parameters keep their value in
      the inner loop; meta-gradients still reach them through the adapted ones.
    lopt_spec: the learned optimisers' architecture when the meta-parameters
      are :class:`metagan_jax.LOptMetaParams` (default ``LOptSpec()``).
    metasgd_direction: Meta-SGD's step direction, an optax transformation whose
      output the learned rates scale (``update = -lr * direction(grad)``).
      ``None`` (default): the gradient itself, Li et al.'s Meta-SGD. For
      example ``optax.scale_by_adam(b1=0.0, b2=0.9, eps_root=1e-12)``: with
      every rate at ``lr`` this is exactly ``optax.adam(lr, ...)``, so Meta-SGD
      starts as MAML with an Adam inner loop and learns a rate per parameter.
    augment: DiffAugment policy for every image the discriminator sees in the
      inner loop (support and fakes in D's updates, fakes in G's, and the
      query losses of MAML-type meta-objectives): ``""`` (default, none),
      ``"translation"``, ``"cutout"`` or ``"translation,cutout"``
      (:mod:`metagan_jax.augment`, background fill -1). Each update draws its
      own transformations from its penalty key, so ``""`` leaves every other
      random stream unchanged.
    recon_weight: conditional models: weight of an L1 reconstruction term in
      G's inner objective, ``|G(z, S without s_i) - s_i|`` (the held-out image
      of each leave-one-out set, never an image G sees). ``0``: none.
    mode_seeking_weight: weight of MSGAN's mode-seeking term in G's inner
      objective, ``1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + 1e-5)`` (with the
      same support set for both latents): it penalises samples that ignore
      ``z``. ``0``: none.

  With a conditional model (``model.conditional``), each real support image
  ``s_i`` is judged beside the other ``K - 1`` (its leave-one-out set), and every
  generated sample is drawn from, and judged beside, one of those sets: so no
  real image is ever judged beside itself, and copying an image of the set is
  not what D's real pairs look like. ``n_fake`` must then be a multiple of K
  (``K = 1``: the one image is its own set).
  ``inner_steps = 0`` adapts nothing: the meta-parameters' initialisation is
  returned (a conditional model then samples amortised, from its support alone).
  """

  model: GanModel
  inner_steps: int = 5
  d_steps: int = 1
  g_steps: int = 1
  inner_lr: float = 0.05
  inner_opt: optax.GradientTransformation | None = None
  d_opt: optax.GradientTransformation | None = None
  g_opt: optax.GradientTransformation | None = None
  loss: str | losses_lib.GanLoss = "ns"
  n_fake: int | None = None
  unroll: bool = False
  remat: bool = False
  first_order: bool = False
  second_order_steps: int | None = None
  g_trainable: str | None = None
  d_trainable: str | None = None
  lopt_spec: LOptSpec | None = None
  metasgd_direction: optax.GradientTransformation | None = None
  augment: str = ""
  recon_weight: float = 0.0
  mode_seeking_weight: float = 0.0

  def __post_init__(self):
    if not isinstance(self.model, GanModel):
      raise TypeError(
        f"AdaptConfig.model must be a metagan_jax.GanModel (e.g. "
        f"metagan_jax.models.dcgan28()), got {type(self.model).__name__}."
      )
    for name, lo in (("inner_steps", 0), ("d_steps", 1), ("g_steps", 1)):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"AdaptConfig.{name} must be an integer >= {lo}, got {v!r}.")
    for name in ("recon_weight", "mode_seeking_weight"):
      v = getattr(self, name)
      if not isinstance(v, numbers.Real) or v < 0:
        raise ValueError(f"AdaptConfig.{name} must be a number >= 0, got {v!r}.")
    if self.recon_weight and not self.model.conditional:
      raise ValueError(
        "AdaptConfig.recon_weight needs a conditional model (a reconstruction of a held-out "
        f"support image); model {self.model.name!r} is unconditional."
      )
    n2 = self.second_order_steps
    if n2 is not None and (
      not isinstance(n2, int) or isinstance(n2, bool) or not 0 <= n2 <= self.inner_steps
    ):
      raise ValueError(
        f"AdaptConfig.second_order_steps must be None (every step) or an integer "
        f"in [0, inner_steps={self.inner_steps}], got {n2!r}."
      )
    if self.n_fake is not None and (not isinstance(self.n_fake, int) or self.n_fake < 1):
      raise ValueError(f"AdaptConfig.n_fake must be None or an integer >= 1, got {self.n_fake!r}.")
    # Resolve the loss now so a bad name fails at construction, not at trace.
    object.__setattr__(self, "loss", losses_lib.get_loss(self.loss))
    object.__setattr__(self, "augment", ",".join(augment_lib.parse_policy(self.augment)))
    # Bad trainable prefixes fail here too, naming the parameters there are.
    if self.g_trainable not in (None, "all") or self.d_trainable not in (None, "all"):
      params = jax.eval_shape(self.model.init, jax.random.key(0))
      trainable_mask(params.g, self.g_trainable, "g_trainable")
      trainable_mask(params.d, self.d_trainable, "d_trainable")

  def optimizers(self) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """The (discriminator, generator) inner optimisers."""
    base = self.inner_opt if self.inner_opt is not None else optax.sgd(self.inner_lr)
    return (self.d_opt or base, self.g_opt or base)


class InnerNoise(NamedTuple):
  """All randomness of one inner loop, drawn up front.

  Attributes:
    z: ``[inner_steps, d_steps + g_steps, n_fake, z_dim]`` latents; index
      ``j < d_steps`` of axis 1 feeds discriminator update ``j``, the rest feed
      the generator updates.
    gp_keys: ``[inner_steps, d_steps]`` keys for penalty interpolates.
  """

  z: jax.Array
  gp_keys: jax.Array


def inner_noise(key: jax.Array, config: AdaptConfig, n_fake: int, dtype=jnp.float32) -> InnerNoise:
  """Draws the latents and penalty keys that :func:`adapt` uses with ``key``."""
  k_z, k_gp = jax.random.split(key)
  s, d, g = config.inner_steps, config.d_steps, config.g_steps
  z = jax.random.normal(k_z, (s, d + g, n_fake, config.model.z_dim), dtype)
  gp_keys = jax.random.split(k_gp, (s, d))
  return InnerNoise(z, gp_keys)


def check_samples(x: Any, model: GanModel, what: str) -> None:
  """Raises a clear error unless ``x`` is a float array ``[N, *model.data_shape]``, N >= 1."""
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None or dtype is None:
    raise TypeError(f"{what} must be an array, got {type(x).__name__}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"{what} must be floating point (images scaled to [-1, 1]), got dtype "
      f"{dtype}; convert with x.astype(jnp.float32) / 127.5 - 1."
    )
  want = tuple(model.data_shape)
  if len(shape) != len(want) + 1 or tuple(shape[1:]) != want or shape[0] < 1:
    raise ValueError(
      f"{what} has shape {tuple(shape)}, but model {model.name!r} expects "
      f"[N >= 1, {', '.join(map(str, want))}]."
    )


def _split_meta_params(meta_params, config: AdaptConfig):
  """Returns (initial GanParams, d optimiser, g optimiser) for any meta-parameter type."""
  if isinstance(meta_params, MetaSGDParams):
    d_opt, g_opt = per_parameter_sgd(meta_params.lr.d), per_parameter_sgd(meta_params.lr.g)
    if config.metasgd_direction is not None:
      d_opt = optax.chain(config.metasgd_direction, d_opt)
      g_opt = optax.chain(config.metasgd_direction, g_opt)
    return meta_params.init, d_opt, g_opt
  if isinstance(meta_params, LOptMetaParams):
    return (meta_params.init, *meta_params.optimizers(config.lopt_spec))
  if isinstance(meta_params, GanParams):
    d_opt, g_opt = config.optimizers()
    return meta_params, d_opt, g_opt
  raise TypeError(
    f"meta_params must be GanParams, MetaSGDParams or LOptMetaParams, got "
    f"{type(meta_params).__name__}; build them with model.init(key)."
  )


def _path_name(path) -> str:
  # dict keys (.key), sequence indices (.idx) and attributes of dataclass-like pytrees
  # (.name: flax.struct, equinox modules), so "w" names the field `w` in each.
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def trainable_mask(params: PyTree, spec: str | None, what: str = "trainable") -> PyTree:
  """A pytree of Python bools: which leaves of ``params`` the inner loop updates.

  Args:
    params: one player's parameters.
    spec: ``None`` or ``"all"`` (every leaf), ``"none"`` (no leaf), or
      comma-separated prefixes of ``/``-joined parameter paths.
    what: names the setting in the error message.

  Raises:
    ValueError: a prefix matches no parameter.
  """
  if spec is None or spec == "all":
    return jax.tree.map(lambda _: True, params)
  if spec == "none":
    return jax.tree.map(lambda _: False, params)
  prefixes = [p.strip().strip("/") for p in spec.split(",") if p.strip()]
  if not prefixes:
    raise ValueError(
      f"AdaptConfig.{what}={spec!r} names no parameter; use None or 'all' "
      f"(every parameter), 'none', or comma-separated path prefixes."
    )
  names = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pre in prefixes:
    if not any(n == pre or n.startswith(pre + "/") for n in names):
      tops = sorted({n.split("/")[0] for n in names})
      raise ValueError(
        f"AdaptConfig.{what}={spec!r}: prefix {pre!r} matches no parameter; "
        f"top-level names are {tops} (full paths such as {names[0]!r})."
      )
  return jax.tree_util.tree_map_with_path(
    lambda p, _: any(
      _path_name(p) == pre or _path_name(p).startswith(pre + "/") for pre in prefixes
    ),
    params,
  )


def _masked(tree: PyTree, mask: PyTree) -> PyTree:
  # A static choice per leaf: XLA drops the gradient work of frozen leaves.
  return jax.tree.map(lambda x, m: x if m else jnp.zeros_like(x), tree, mask)


def _tiled(support: jax.Array, n_fake: int) -> jax.Array:
  # n_fake = r * K: D's real term keeps its mean over the K images, and the
  # WGAN-GP penalty pairs every generated sample with a real one.
  k = support.shape[0]
  if n_fake > k and n_fake % k == 0:
    return jnp.tile(support, (n_fake // k,) + (1,) * (support.ndim - 1))
  return support


def leave_one_out_sets(support_KxD: jax.Array) -> jax.Array:
  """``[K, K - 1, ...]``: row ``i`` is the support without image ``i`` (``K = 1``: ``[1, 1, ...]``).

  What a conditional model conditions on in the inner loop: real image ``i`` is
  judged beside the other ``K - 1``, never beside itself.
  """
  k = support_KxD.shape[0]
  if k == 1:
    return support_KxD[:, None]
  idx = np.array([[j for j in range(k) if j != i] for i in range(k)])
  return support_KxD[idx]


def inner_step(carry, xs, *, support, d_opt, g_opt, config: AdaptConfig):
  """One inner step: ``d_steps`` D updates, then ``g_steps`` G updates.

  Args:
    carry: ``(g, d, g_opt_state, d_opt_state)``.
    xs: ``(z [d_steps + g_steps, n_fake, z_dim], gp_keys [d_steps])``, one row of
      :class:`InnerNoise`.
    support: the task's real samples.
    d_opt, g_opt: the players' optax transformations.
    config: the :class:`AdaptConfig` (model, loss, step counts, first_order).

  Returns:
    ``(new carry, (mean D loss, mean G loss))``, losses before each update.
  """
  model, loss, nd = config.model, config.loss, config.d_steps
  const = jax.lax.stop_gradient if config.first_order else (lambda t: t)
  aug = augment_lib.parse_policy(config.augment)
  n_fake = xs[0].shape[1]
  # Conditional: row i of every batch (real, fake) is judged beside leave-one-out set i mod K.
  sets = _tiled(leave_one_out_sets(support), n_fake) if model.conditional else None

  def d_obj(d, fake, gp_key):
    real = _tiled(support, fake.shape[0])
    if aug:  # one draw for [real; fake], so the penalty interpolates augmented pairs
      both = augment_lib.diff_augment(
        jax.random.fold_in(gp_key, 1), jnp.concatenate([real, fake]), aug
      )
      real, fake = both[: real.shape[0]], both[real.shape[0] :]
    return loss.d_objective(model.critic(d, sets), real, fake, gp_key)

  def g_obj(g, d, z, aug_key):
    fake = model.generate(g, z, sets)
    terms = []  # the named extra terms; none by default, so the objective is the GAN loss alone
    if config.recon_weight:  # each sample's target: the image its set leaves out
      terms.append(config.recon_weight * jnp.mean(jnp.abs(fake - _tiled(support, z.shape[0]))))
    if config.mode_seeking_weight:
      z2 = jax.random.normal(jax.random.fold_in(aug_key, 7), z.shape, z.dtype)
      x2 = model.generate(g, z2, sets)
      terms.append(config.mode_seeking_weight * losses_lib.mode_seeking(fake, x2, z, z2))
    if aug:
      fake = augment_lib.diff_augment(aug_key, fake, aug)
    return sum(terms, loss.g_objective(model.discriminate(d, fake, sets)))

  g, d, g_state, d_state = carry
  z_Sx, gp_keys = xs
  d_mask = trainable_mask(d, config.d_trainable, "d_trainable")
  g_mask = trainable_mask(g, config.g_trainable, "g_trainable")
  d_losses, g_losses = [], []
  for j in range(nd):
    # fake is built from the current g; grad w.r.t. d alone is the partial
    # derivative, and the outer derivative still flows into g through fake.
    fake = model.generate(g, z_Sx[j], sets)
    l, grads = jax.value_and_grad(d_obj)(d, fake, gp_keys[j])
    upd, d_state = d_opt.update(_masked(const(grads), d_mask), d_state, d)
    d = optax.apply_updates(d, _masked(upd, d_mask))
    d_losses.append(l)
  for j in range(config.g_steps):
    l, grads = jax.value_and_grad(g_obj)(g, d, z_Sx[nd + j], jax.random.fold_in(gp_keys[0], 2 + j))
    upd, g_state = g_opt.update(_masked(const(grads), g_mask), g_state, g)
    g = optax.apply_updates(g, _masked(upd, g_mask))
    g_losses.append(l)
  return (g, d, g_state, d_state), (jnp.mean(jnp.stack(d_losses)), jnp.mean(jnp.stack(g_losses)))


def _start(meta_params, support: jax.Array, key: jax.Array, config: AdaptConfig):
  """What every adaptation begins with: ``(carry, noise, d_opt, g_opt)``, the support checked."""
  check_samples(support, config.model, "support")
  n_fake = config.n_fake or support.shape[0]
  if config.model.conditional and n_fake % support.shape[0]:
    raise ValueError(
      f"AdaptConfig.n_fake={n_fake} must be a multiple of the support size K = "
      f"{support.shape[0]} for a conditional model: each sample is drawn from one of the K "
      "leave-one-out sets, as many times as each real image."
    )
  params, d_opt, g_opt = _split_meta_params(meta_params, config)
  noise = inner_noise(key, config, n_fake, support.dtype)
  carry = (params.g, params.d, g_opt.init(params.g), d_opt.init(params.d))
  return carry, noise, d_opt, g_opt


def adapt_with_aux(meta_params, support: jax.Array, key: jax.Array, config: AdaptConfig):
  """Like :func:`adapt`, also returning per-step inner losses.

  Returns:
    ``(adapted GanParams, {"d_loss": [inner_steps], "g_loss": [inner_steps]})``,
    each loss the mean over that step's player updates, measured before the update.
  """
  carry, noise, d_opt, g_opt = _start(meta_params, support, key, config)
  n_all = config.inner_steps
  n_first = (
    0
    if config.first_order or config.second_order_steps is None
    else (n_all - config.second_order_steps)
  )
  # Steps [0, n_first) first-order, [n_first, n_all) as configured.
  segments = [(0, n_first, dataclasses.replace(config, first_order=True))] if n_first else []
  segments += [(n_first, n_all, config)] if n_all > n_first else []
  d_l, g_l = [], []
  for lo, hi, cfg in segments:
    step = functools.partial(inner_step, support=support, d_opt=d_opt, g_opt=g_opt, config=cfg)
    if config.remat:
      step = jax.checkpoint(step)
    if config.unroll:
      for i in range(lo, hi):
        carry, (dl, gl) = step(carry, (noise.z[i], noise.gp_keys[i]))
        d_l.append(dl[None])
        g_l.append(gl[None])
    else:
      carry, (dl, gl) = jax.lax.scan(step, carry, (noise.z[lo:hi], noise.gp_keys[lo:hi]))
      d_l.append(dl)
      g_l.append(gl)
  g, d = carry[0], carry[1]
  if not segments:  # inner_steps = 0: nothing adapts
    d_l = g_l = [jnp.zeros((0,), support.dtype)]
  return GanParams(g=g, d=d), {"d_loss": jnp.concatenate(d_l), "g_loss": jnp.concatenate(g_l)}


def adapt_prefix(
  meta_params, support: jax.Array, key: jax.Array, config: AdaptConfig, steps
) -> GanParams:
  """The first ``steps`` inner steps of :func:`adapt`, ``steps`` a (possibly traced) integer.

  The same computation as ``adapt`` with ``inner_steps = steps`` and the same ``key``: the
  latents of :func:`inner_noise` are drawn position by position, so a shorter adaptation's
  are a prefix of a longer one's (bitwise equal results for the protocol's T = 5, 10, 25, 50;
  XLA compiles a scan of one step differently, so T = 1 differs by float rounding, about
  1e-5). Because ``steps`` may be traced, one compiled program serves
  every ``steps <= config.inner_steps`` (the evaluation adapts for several T). A
  ``lax.fori_loop`` with a traced trip count: for evaluation, not reverse-differentiable.

  Raises:
    ValueError: a concrete ``steps`` outside ``[0, config.inner_steps]``.
  """
  if isinstance(steps, numbers.Integral) and not 0 <= steps <= config.inner_steps:
    raise ValueError(
      f"adapt_prefix: steps={steps} must lie in [0, inner_steps="
      f"{config.inner_steps}]; build the AdaptConfig with the largest T."
    )
  carry, noise, d_opt, g_opt = _start(meta_params, support, key, config)
  step = functools.partial(inner_step, support=support, d_opt=d_opt, g_opt=g_opt, config=config)
  carry = jax.lax.fori_loop(
    0, steps, lambda i, c: step(c, (noise.z[i], noise.gp_keys[i]))[0], carry
  )
  return GanParams(g=carry[0], d=carry[1])


def adapt(meta_params, support: jax.Array, key: jax.Array, config: AdaptConfig) -> GanParams:
  """Adapts a GAN pair to one task by alternating D/G gradient steps.

  Each of ``config.inner_steps`` steps makes ``d_steps`` discriminator updates
  (real = ``support``, fake = G(z) with fresh z) and then ``g_steps`` generator
  updates against the just-updated discriminator. Each player's update uses the
  partial gradient of its own loss w.r.t. its own parameters; the other
  player's current parameters are constants for that gradient, while
  derivatives w.r.t. ``meta_params`` still flow through both players.

  Pure, ``jit``/``vmap``-able and differentiable w.r.t. ``meta_params``.

  Args:
    meta_params: :class:`GanParams` (an initialisation),
      :class:`MetaSGDParams` (an initialisation plus per-parameter learning
      rates, which then replace the configured inner optimiser) or
      :class:`metagan_jax.LOptMetaParams` (an initialisation plus learned
      optimisers for D and G).
    support: ``[K, *model.data_shape]`` float samples of the task.
    key: PRNG key; all latents of the loop are drawn from it (:func:`inner_noise`).
    config: an :class:`AdaptConfig`.

  Returns:
    The adapted :class:`GanParams`.
  """
  return adapt_with_aux(meta_params, support, key, config)[0]
