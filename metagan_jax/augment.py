"""Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al. 2020).

A discriminator trained on a handful of images memorises them; showing it every
image -- real and generated alike, in the discriminator's and the generator's
updates -- through a random transformation ``T`` makes it judge ``T(x)``, and
since ``T`` is differentiable the generator still gets exact gradients through
it. The ops follow the reference implementation (``DiffAugment_pytorch.py`` of
mit-han-lab/data-efficient-gans): integer ``translation`` by up to
``ratio * size`` pixels per axis, the uncovered pixels filled, and ``cutout`` of
one ``ratio * size`` square per image. The fill is an argument because
Omniglot's background is -1 (the reference fills with 0, mid-grey in [-1, 1]).
Colour ops are omitted: the images are grey.

Each image gets its own draw, so ``diff_augment(key, x)`` of a batch differs from
augmenting its images one by one; a loss that concatenates real and fake batches
augments the concatenation once (compare_gan's form, so the gradient penalty sees
interpolates of augmented images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
  "OPS",
  "parse_policy",
  "translate",
  "cutout",
  "diff_augment",
]

#: The augmentation ops a policy may name (:func:`parse_policy`).
OPS = ("translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
  """``"translation,cutout"`` -> ``("translation", "cutout")``; ``""``/``None`` -> ``()``.

  Raises:
    ValueError: an op that is not in :data:`OPS`.
  """
  names = tuple(p.strip() for p in (policy or "").split(",") if p.strip())
  bad = [n for n in names if n not in OPS]
  if bad:
    raise ValueError(
      f"augment policy {policy!r}: unknown op(s) {bad}; use a comma-separated "
      f"subset of {list(OPS)}, or '' for none."
    )
  return names


def translate(
  key: jax.Array, x_NxHxWxC: jax.Array, ratio: float = 0.125, fill: float = -1.0
) -> jax.Array:
  """Shifts every image by its own integer (dy, dx), each uniform in [-s, s], s = round(ratio*size).

  Pixels shifted in from outside the image take ``fill``. Linear in ``x``, so its
  gradient is the reverse shift.
  """
  n, h, w, _ = x_NxHxWxC.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  ky, kx = jax.random.split(key)
  dy = jax.random.randint(ky, (n,), -sh, sh + 1)
  dx = jax.random.randint(kx, (n,), -sw, sw + 1)
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (sh, sh), (sw, sw), (0, 0)), constant_values=fill)
  # output pixel (i, j) = input (i - dy, j - dx): the window starts at s - d in the padding
  crop = lambda img, oy, ox: jax.lax.dynamic_slice(img, (oy, ox, 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(xp, sh - dy, sw - dx)


def cutout(
  key: jax.Array, x_NxHxWxC: jax.Array, ratio: float = 0.5, fill: float = -1.0
) -> jax.Array:
  """Sets one ``round(ratio*size)`` square per image (centre uniform, clipped to the image) to ``fill``."""
  n, h, w, _ = x_NxHxWxC.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  ky, kx = jax.random.split(key)
  # the reference's offsets: uniform in [0, size + 1 - size % 2), minus half the box
  oy = jax.random.randint(ky, (n, 1, 1, 1), 0, h + 1 - ch % 2) - ch // 2
  ox = jax.random.randint(kx, (n, 1, 1, 1), 0, w + 1 - cw % 2) - cw // 2
  i = jnp.arange(h)[None, :, None, None]
  j = jnp.arange(w)[None, None, :, None]
  box = (i >= oy) & (i < oy + ch) & (j >= ox) & (j < ox + cw)
  return jnp.where(box, jnp.asarray(fill, x_NxHxWxC.dtype), x_NxHxWxC)


def diff_augment(
  key: jax.Array, x_NxHxWxC: jax.Array, policy: str | tuple[str, ...], fill: float = -1.0
) -> jax.Array:
  """Applies the ops of ``policy`` in order, each with its own key; ``policy=""`` is the identity.

  Args:
    key: PRNG key (one draw per image and op).
    x_NxHxWxC: a batch of images.
    policy: ``"translation"``, ``"cutout"``, ``"translation,cutout"`` or ``""``.
    fill: the value of uncovered pixels (the background: -1 for Omniglot in [-1, 1]).
  """
  names = parse_policy(policy) if isinstance(policy, str) else policy
  x = x_NxHxWxC
  for i, name in enumerate(names):
    k = jax.random.fold_in(key, i)
    x = translate(k, x, fill=fill) if name == "translation" else cutout(k, x, fill=fill)
  return x
