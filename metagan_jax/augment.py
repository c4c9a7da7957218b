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

:func:`random_affine` is a classifier's standard augmentation (shifts, small
rotations and scalings), the bar that generated images must add to
(``experiments/protocol/dagan.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.ndimage

__all__ = [
  "OPS",
  "parse_policy",
  "translate",
  "cutout",
  "diff_augment",
  "random_affine",
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


def random_affine(
  key: jax.Array,
  x_NxHxWxC: jax.Array,
  shift: float = 0.075,
  rotate: float = 0.0,
  scale: float = 0.0,
  fill: float = -1.0,
) -> jax.Array:
  """A classifier's standard augmentation: per image, a shift, a small rotation and a scaling.

  Each image is shifted by an integer (dy, dx), each uniform in [-s, s] with
  s = round(shift * size) (as :func:`translate`), rotated by an angle uniform in
  [-rotate, rotate] degrees and scaled by a factor uniform in [1 - scale, 1 + scale],
  both about its centre; pixels are interpolated bilinearly and those that come
  from outside the image take ``fill``. With ``rotate = scale = 0`` it is exactly
  :func:`translate` (no interpolation).

  Args:
    key: PRNG key (one draw per image).
    x_NxHxWxC: a batch of images.
    shift: the largest shift, as a fraction of the image size (0.075: 2 px at 28).
    rotate: the largest rotation, in degrees.
    scale: the largest relative change of size.
    fill: the background value (-1 for Omniglot in [-1, 1]).
  """
  if rotate < 0 or scale < 0 or shift < 0 or scale >= 1:
    raise ValueError(
      f"random_affine(shift={shift}, rotate={rotate}, scale={scale}): use shift, rotate >= 0 "
      f"and 0 <= scale < 1."
    )
  if rotate == 0 and scale == 0:
    return translate(key, x_NxHxWxC, ratio=shift, fill=fill)
  n, h, w, _ = x_NxHxWxC.shape
  sh, sw = int(h * shift + 0.5), int(w * shift + 0.5)
  ky, kx, kr, ks = jax.random.split(key, 4)
  dy = jax.random.randint(ky, (n,), -sh, sh + 1).astype(jnp.float32)
  dx = jax.random.randint(kx, (n,), -sw, sw + 1).astype(jnp.float32)
  theta = jnp.deg2rad(jax.random.uniform(kr, (n,), minval=-rotate, maxval=rotate))
  zoom = jax.random.uniform(ks, (n,), minval=1.0 - scale, maxval=1.0 + scale)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
  )

  def one(img_HxWxC, dy, dx, theta, zoom):
    # output pixel p reads the input at centre + R(-theta) (p - centre - d) / zoom
    u, v = yy - cy - dy, xx - cx - dx
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src_y = (cos * u + sin * v) / zoom + cy
    src_x = (-sin * u + cos * v) / zoom + cx
    warp = lambda ch: jax.scipy.ndimage.map_coordinates(
      ch, [src_y, src_x], order=1, mode="constant", cval=fill
    )
    return jax.vmap(warp, in_axes=-1, out_axes=-1)(img_HxWxC)

  return jax.vmap(one)(x_NxHxWxC, dy, dx, theta, zoom)
