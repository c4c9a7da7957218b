"""Plain GAN training: one pure step (D updates, a G update, an EMA of G).

This is how the few-shot experiments pre-train a GAN on all meta-training
classes before meta-learning (and what the ``transfer`` baseline fine-tunes).
Like every other piece of the library it is a pure function of pytrees::

    config = GanTrainConfig(mg.models.fsgan28(), loss="wgan-gp", d_steps=2)
    state = gan.init(key, config)
    step = jax.jit(functools.partial(gan.train_step, config=config))
    for i, real_NxHxWxC in enumerate(batches):
      state, metrics = step(state, real_NxHxWxC, jax.random.fold_in(key, i))
    samples = config.model.generate(state.ema_g, z)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from metagan_jax import augment as augment_lib
from metagan_jax import losses as losses_lib
from metagan_jax.inner import check_samples
from metagan_jax.models import GanModel, GanParams

__all__ = [
  "GanTrainConfig",
  "GanTrainState",
  "init",
  "train_step",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class GanTrainConfig:
  """A GAN training recipe (static under ``jit``); the defaults draw Omniglot with fsgan28.

  Attributes:
    model: the generator/discriminator pair.
    loss: a preset name (``ns``, ``hinge``, ``wgan-gp``, ``ns-r1``, ...) or a
      :class:`metagan_jax.GanLoss`.
    d_opt / g_opt: the players' optax optimisers; default Adam(1e-4, b1=0,
      b2=0.9) for D and G alike (WGAN-GP's).
    d_steps: discriminator updates per step (each on a fresh fake batch).
    ema: decay of the exponential moving average of G's parameters (0: none).
      ``ema_g`` is what one samples from; it usually draws much cleaner images
      than the raw generator of an adversarial game. The decay warms up as
      ``min(ema, (1 + t) / (10 + t))`` so early steps do not average in the
      random initialisation.
    augment: DiffAugment policy for every image D sees, in D's and G's updates
      (``""``: none; ``"translation"``, ``"cutout"``, ``"translation,cutout"``;
      :mod:`metagan_jax.augment`). ``""`` leaves the other random streams as
      they were.
    recon_weight: conditional models: weight of an L1 term ``|G(z, set_i) - real_i|``
      in G's loss, each real image the held-out target of its support set
      (DAGAN / FAML-style pre-training; the caller keeps ``real_i`` out of its set).
    mode_seeking_weight: weight of MSGAN's mode-seeking term in G's loss (see
      :class:`metagan_jax.AdaptConfig`).
    mismatch_weight: conditional models: a matching-aware critic (after GAN-CLS, Reed
      et al., 2016). D also scores each real image beside the *next* row's support set
      (``jnp.roll`` by one: another class when the rows are distinct classes) and pays
      ``softplus(D(x_i, S_next) - D(x_i, S_i))``, with this weight: a relative, bounded
      term (a plain "call it fake" term is unbounded under the Wasserstein loss, whose
      penalty does not reach the set argument, and diverged). It teaches D to check that
      ``x`` belongs to its set's class. Pre-training only: an inner loop sees one class.
    class_weight: a class head in D (AC-GAN, Odena et al., 2017; the auxiliary classifier
      of MatchingGAN, F2GAN and LoFGAN): D's loss adds this weight times the cross-entropy
      of its class head (:meth:`~metagan_jax.GanModel.classify`) on the real images and
      their ``labels``, G's the same on its fakes, each drawn for its real image's class. So
      G is paid for samples that a classifier of the training classes puts in the right
      class. Needs a model with a class head (``cfsgan28(num_classes=C)``) and ``labels``
      in :func:`train_step`. Pre-training only: an inner loop sees one class.
  """

  model: GanModel
  loss: str | losses_lib.GanLoss = "wgan-gp"
  d_opt: optax.GradientTransformation | None = None
  g_opt: optax.GradientTransformation | None = None
  d_steps: int = 2
  ema: float = 0.999
  augment: str = ""
  recon_weight: float = 0.0
  mode_seeking_weight: float = 0.0
  mismatch_weight: float = 0.0
  class_weight: float = 0.0

  def __post_init__(self):
    if not isinstance(self.model, GanModel):
      raise TypeError(
        f"GanTrainConfig.model must be a metagan_jax.GanModel, got {type(self.model).__name__}."
      )
    if not isinstance(self.d_steps, int) or self.d_steps < 1:
      raise ValueError(f"GanTrainConfig.d_steps must be an integer >= 1, got {self.d_steps!r}.")
    if not 0.0 <= self.ema < 1.0:
      raise ValueError(f"GanTrainConfig.ema must be in [0, 1), got {self.ema!r}.")
    for name in ("recon_weight", "mode_seeking_weight", "mismatch_weight", "class_weight"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"GanTrainConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
    for name in ("recon_weight", "mismatch_weight"):
      if getattr(self, name) and not self.model.conditional:
        raise ValueError(
          f"GanTrainConfig.{name} needs a conditional model; {self.model.name!r} is not."
        )
    if self.class_weight and not self.model.num_classes:
      raise ValueError(
        f"GanTrainConfig.class_weight={self.class_weight!r} needs a discriminator with a class "
        f"head; {self.model.name!r} has none (e.g. models.cfsgan28(num_classes=C), C the "
        "number of training classes)."
      )
    object.__setattr__(self, "loss", losses_lib.get_loss(self.loss))
    object.__setattr__(self, "augment", ",".join(augment_lib.parse_policy(self.augment)))

  def optimizers(self) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """The (discriminator, generator) optimisers."""
    default = optax.adam(1e-4, b1=0.0, b2=0.9)
    return self.d_opt or default, self.g_opt or default


@flax.struct.dataclass
class GanTrainState:
  """Parameters of both players, the EMA generator, optimiser states and the step count."""

  params: GanParams
  ema_g: PyTree
  d_opt_state: PyTree
  g_opt_state: PyTree
  step: jax.Array


def init(key: jax.Array, config: GanTrainConfig, params: GanParams | None = None) -> GanTrainState:
  """A fresh training state (from ``model.init(key)``, or from ``params`` to fine-tune)."""
  params = config.model.init(key) if params is None else params
  d_opt, g_opt = config.optimizers()
  return GanTrainState(
    params, params.g, d_opt.init(params.d), g_opt.init(params.g), jnp.zeros((), jnp.int32)
  )


def train_step(
  state: GanTrainState,
  real: jax.Array,
  key: jax.Array,
  config: GanTrainConfig,
  support=None,
  labels=None,
):
  """One step: ``d_steps`` D updates, one G update, the EMA update. Pure.

  Args:
    state: a :class:`GanTrainState`.
    real: ``[N, *model.data_shape]`` real samples (one batch; every D update uses it).
    key: PRNG key for the step's latents and penalty interpolates.
    config: a :class:`GanTrainConfig`.
    support: conditional models only: ``[N, M, *data_shape]``, the set each real image
      is judged beside (images of its class, itself left out) and each fake is drawn from.
    labels: with ``config.class_weight``: ``int[N]``, each real image's class in
      ``[0, model.num_classes)`` (its fake is drawn for the same class).

  Returns:
    ``(new state, {"d_loss", "g_loss", "d_fake"})``: losses before the updates,
    and the mean logit of the updated D on the G update's fake batch.
  """
  check_samples(real, config.model, "real")
  model, loss = config.model, config.loss
  if config.class_weight and getattr(labels, "shape", None) != (real.shape[0],):
    raise ValueError(
      f"train_step: class_weight={config.class_weight} needs labels=int[{real.shape[0]}], the "
      f"class of each real image; got {getattr(labels, 'shape', labels)!r}."
    )
  sets = model.support_sets(support, real.shape[0]) if model.conditional else support
  d_opt, g_opt = config.optimizers()
  n = real.shape[0]
  g, d = state.params.g, state.params.d
  d_state, g_state = state.d_opt_state, state.g_opt_state
  keys = jax.random.split(key, 2 * config.d_steps + 1)

  aug = augment_lib.parse_policy(config.augment)

  def d_obj(d_, fake, k):
    real_ = real
    if aug:  # one draw for [real; fake], so the penalty interpolates augmented pairs
      both = augment_lib.diff_augment(jax.random.fold_in(k, 1), jnp.concatenate([real, fake]), aug)
      real_, fake = both[:n], both[n:]
    out = loss.d_objective(model.critic(d_, sets), real_, fake, k)
    if config.mismatch_weight:  # real images score higher beside their own class's set
      right = model.discriminate(d_, real_, sets)
      wrong = model.discriminate(d_, real_, jnp.roll(sets, 1, axis=0))
      out = out + config.mismatch_weight * jnp.mean(jax.nn.softplus(wrong - right))
    if config.class_weight:  # the class head learns the training classes from real images
      out = out + config.class_weight * _class_xent(model.classify(d_, real_), labels)
    return out

  d_losses = []
  for j in range(config.d_steps):
    fake = model.generate(g, model.sample_z(keys[2 * j], n, real.dtype), sets)
    l, grads = jax.value_and_grad(d_obj)(d, fake, keys[2 * j + 1])
    upd, d_state = d_opt.update(grads, d_state, d)
    d = optax.apply_updates(d, upd)
    d_losses.append(l)
  z = model.sample_z(keys[-1], n, real.dtype)

  def g_obj(g_):
    fake = model.generate(g_, z, sets)
    terms = []  # the named extra terms (none by default: the GAN loss alone)
    if config.recon_weight:
      terms.append(config.recon_weight * jnp.mean(jnp.abs(fake - real)))
    if config.mode_seeking_weight:
      z2 = model.sample_z(jax.random.fold_in(keys[-1], 7), n, real.dtype)
      x2 = model.generate(g_, z2, sets)
      terms.append(config.mode_seeking_weight * losses_lib.mode_seeking(fake, x2, z, z2))
    if aug:
      fake = augment_lib.diff_augment(jax.random.fold_in(keys[-1], 1), fake, aug)
    if config.class_weight:  # each fake put in its set's class by D's class head
      terms.append(config.class_weight * _class_xent(model.classify(d, fake), labels))
    logits = model.discriminate(d, fake, sets)
    return sum(terms, loss.g_objective(logits)), logits

  (g_loss, fake_logits), grads = jax.value_and_grad(g_obj, has_aux=True)(g)
  upd, g_state = g_opt.update(grads, g_state, g)
  g = optax.apply_updates(g, upd)
  if config.ema:
    t = state.step.astype(jnp.float32)
    decay = jnp.minimum(config.ema, (1.0 + t) / (10.0 + t))
    ema_g = optax.incremental_update(g, state.ema_g, 1.0 - decay)
  else:
    ema_g = g
  metrics = {
    "d_loss": jnp.mean(jnp.stack(d_losses)),
    "g_loss": g_loss,
    "d_fake": jnp.mean(fake_logits),
  }
  return GanTrainState(GanParams(g=g, d=d), ema_g, d_state, g_state, state.step + 1), metrics


def _class_xent(logits_NxC: jax.Array, labels_N: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_NxC, labels_N))
