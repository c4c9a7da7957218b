"""GAN losses on discriminator logits, and gradient penalties.

The plain losses are functions of logits only, so they compose with any model;
the penalties need the discriminator itself, as a function ``x -> logits``.
:class:`GanLoss` bundles a choice of both into the two objectives the inner
loop differentiates, ``d_objective`` and ``g_objective``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
  "ns_d_loss",
  "ns_g_loss",
  "hinge_d_loss",
  "hinge_g_loss",
  "wasserstein_d_loss",
  "wasserstein_g_loss",
  "gradient_penalty",
  "r1_penalty",
  "mode_seeking",
  "GanLoss",
  "get_loss",
]

Array = jax.Array


def mode_seeking(x1: Array, x2: Array, z1: Array, z2: Array) -> Array:
  """MSGAN's mode-seeking term (Mao et al., 2019), to minimise in G's loss.

  ``1 / (mean|x1 - x2| / mean|z1 - z2| + 1e-5)`` for samples ``x1 = G(z1)``,
  ``x2 = G(z2)`` of the same condition: large when the samples ignore ``z``.
  """
  ratio = jnp.mean(jnp.abs(x1 - x2)) / jnp.mean(jnp.abs(z1 - z2))
  return 1.0 / (ratio + 1e-5)


def ns_d_loss(real_logits: Array, fake_logits: Array) -> Array:
  """Non-saturating (logistic) discriminator loss: E softplus(-D(x)) + E softplus(D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def ns_g_loss(fake_logits: Array) -> Array:
  """Non-saturating generator loss: E softplus(-D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def hinge_d_loss(real_logits: Array, fake_logits: Array) -> Array:
  """Hinge discriminator loss: E relu(1 - D(x)) + E relu(1 + D(G(z)))."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: Array) -> Array:
  """Hinge generator loss: -E D(G(z))."""
  return -jnp.mean(fake_logits)


def wasserstein_d_loss(real_logits: Array, fake_logits: Array) -> Array:
  """Wasserstein critic loss: E D(G(z)) - E D(x)."""
  return jnp.mean(fake_logits) - jnp.mean(real_logits)


def wasserstein_g_loss(fake_logits: Array) -> Array:
  """Wasserstein generator loss: -E D(G(z))."""
  return -jnp.mean(fake_logits)


def _input_grads(disc: Callable[[Array], Array], x: Array) -> Array:
  # Each logit depends only on its own sample, so the gradient of the sum is
  # the per-sample input gradient.
  return jax.grad(lambda x_: jnp.sum(disc(x_)))(x)


def gradient_penalty(disc: Callable[[Array], Array], real: Array, fake: Array, key: Array) -> Array:
  """WGAN-GP penalty E (||grad_x D(x_hat)|| - 1)^2 on random interpolates x_hat.

  Args:
    disc: the discriminator as a function of its input, ``x_N... -> logits_N``.
    real: real samples ``[N, ...]``.
    fake: generated samples, same shape as ``real``.
    key: PRNG key for the interpolation weights.
  """
  if real.shape != fake.shape:
    raise ValueError(
      f"gradient_penalty needs real and fake of equal shape, got "
      f"{real.shape} and {fake.shape}; set n_fake to a multiple of the support size."
    )
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  x_hat = eps * real + (1.0 - eps) * fake
  g = _input_grads(disc, x_hat).reshape(real.shape[0], -1)
  # A tiny floor keeps the norm's derivative finite at zero for second order.
  norm = jnp.sqrt(jnp.sum(g * g, axis=1) + 1e-12)
  return jnp.mean((norm - 1.0) ** 2)


def r1_penalty(disc: Callable[[Array], Array], real: Array) -> Array:
  """R1 penalty E ||grad_x D(x)||^2 on real samples (multiply by gamma / 2)."""
  g = _input_grads(disc, real).reshape(real.shape[0], -1)
  return jnp.mean(jnp.sum(g * g, axis=1))


_PLAIN = {
  "ns": (ns_d_loss, ns_g_loss),
  "hinge": (hinge_d_loss, hinge_g_loss),
  "wasserstein": (wasserstein_d_loss, wasserstein_g_loss),
}

# Named presets; a GanLoss can also be built field by field.
_PRESETS = {
  "ns": dict(kind="ns"),
  "hinge": dict(kind="hinge"),
  "wasserstein": dict(kind="wasserstein"),
  "wgan-gp": dict(kind="wasserstein", gp_weight=10.0),
  "ns-r1": dict(kind="ns", r1_weight=10.0),
}


@dataclasses.dataclass(frozen=True)
class GanLoss:
  """A GAN objective: a plain loss plus optional penalties on the discriminator.

  Attributes:
    kind: ``"ns"`` (non-saturating), ``"hinge"`` or ``"wasserstein"``.
    gp_weight: weight of the WGAN-GP gradient penalty (10 in WGAN-GP / FIGR).
    r1_weight: gamma of the R1 penalty; the term added is ``gamma / 2 * R1``.
  """

  kind: str = "ns"
  gp_weight: float = 0.0
  r1_weight: float = 0.0

  def __post_init__(self):
    if self.kind not in _PLAIN:
      raise ValueError(
        f"Unknown GAN loss kind {self.kind!r}; choose from {sorted(_PLAIN)} "
        f"or a preset name from {sorted(_PRESETS)}."
      )
    if self.gp_weight < 0 or self.r1_weight < 0:
      raise ValueError(
        f"Penalty weights must be >= 0, got gp_weight={self.gp_weight}, r1_weight={self.r1_weight}."
      )

  @property
  def needs_key(self) -> bool:
    return self.gp_weight > 0

  def d_objective(
    self, disc: Callable[[Array], Array], real: Array, fake: Array, key: Array | None = None
  ) -> Array:
    """Discriminator loss of ``disc`` on real and fake samples, penalties included."""
    n_real = real.shape[0]
    # One discriminator call on the concatenated batch: fewer, larger convs.
    logits = disc(jnp.concatenate([real, fake], axis=0))
    loss = _PLAIN[self.kind][0](logits[:n_real], logits[n_real:])
    if self.gp_weight > 0:
      loss = loss + self.gp_weight * gradient_penalty(disc, real, fake, key)
    if self.r1_weight > 0:
      loss = loss + 0.5 * self.r1_weight * r1_penalty(disc, real)
    return loss

  def g_objective(self, fake_logits: Array) -> Array:
    """Generator loss from the discriminator's logits on generated samples."""
    return _PLAIN[self.kind][1](fake_logits)


def get_loss(loss: str | GanLoss) -> GanLoss:
  """Resolves a preset name (``ns``, ``hinge``, ``wasserstein``, ``wgan-gp``, ``ns-r1``)."""
  if isinstance(loss, GanLoss):
    return loss
  if loss not in _PRESETS:
    raise ValueError(
      f"Unknown GAN loss {loss!r}; choose from {sorted(_PRESETS)} "
      "or pass a metagan_jax.GanLoss(...)."
    )
  return GanLoss(**_PRESETS[loss])
