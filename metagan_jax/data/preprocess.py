"""Preprocessing: model size, [-1, 1], channels-last, inversion, augmentation.

All numpy, deterministic. Resizing is separable and linear (a matrix per
axis): area averaging when shrinking (anti-aliased, like TF's ``area``),
bilinear when enlarging, so no image library is needed.
"""

from __future__ import annotations

import functools

import numpy as np

from metagan_jax.data.sources import ClassDataset, DataError, check_finite

__all__ = [
  "to_unit_range",
  "center_crop_square",
  "resize",
  "to_channels",
  "as_nhwc",
  "blur",
  "preprocess_images",
  "preprocess_dataset",
  "add_rotations",
  "jitter",
]

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_unit_range(imgs: np.ndarray, what: str) -> np.ndarray:
  """uint8 (0..255), bool, or float (0..1) images -> float32 in [0, 1]."""
  if imgs.dtype == np.bool_:
    return imgs.astype(np.float32)
  if np.issubdtype(imgs.dtype, np.integer):
    if imgs.size and (imgs.min() < 0 or imgs.max() > 255):
      raise DataError(
        f"{what}: integer images must be 8-bit (0..255), got values in "
        f"[{imgs.min()}, {imgs.max()}]; convert to uint8 or to float in [0, 1]."
      )
    return imgs.astype(np.float32) * np.float32(1 / 255)
  if np.issubdtype(imgs.dtype, np.floating):
    check_finite(imgs, what)
    lo, hi = (float(imgs.min()), float(imgs.max())) if imgs.size else (0.0, 0.0)
    if lo < -1e-6 or hi > 1 + 1e-6:
      raise DataError(
        f"{what}: float images must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
        f"rescale them (or store uint8 0..255)."
      )
    return imgs.astype(np.float32)
  raise DataError(f"{what}: unsupported image dtype {imgs.dtype}; use uint8 or float.")


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` weights: area average when shrinking, bilinear when enlarging."""
  if n_out == n_in:
    return np.eye(n_in, dtype=np.float32)
  m = np.zeros((n_out, n_in), np.float64)
  if n_out < n_in:
    # Output pixel i covers input span [i*s, (i+1)*s); weight = overlap / s.
    s = n_in / n_out
    for i in range(n_out):
      a, b = i * s, (i + 1) * s
      for j in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
        m[i, j] = min(b, j + 1) - max(a, j)
    m /= s
  else:
    # Half-pixel centres (align_corners=False), clamped at the borders.
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    j0 = np.floor(src).astype(int)
    j1 = np.minimum(j0 + 1, n_in - 1)
    w = src - j0
    m[np.arange(n_out), j0] += 1 - w
    m[np.arange(n_out), j1] += w
  return m.astype(np.float32)


def center_crop_square(imgs_NxHxWxC: np.ndarray) -> np.ndarray:
  """Crops the central square (non-square images would be distorted by resizing)."""
  _, h, w, _ = imgs_NxHxWxC.shape
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return imgs_NxHxWxC[:, top : top + s, left : left + s]


def resize(imgs_NxHxWxC: np.ndarray, size: int) -> np.ndarray:
  """Resizes float images to ``size x size`` (centre-cropping non-square ones)."""
  imgs = center_crop_square(imgs_NxHxWxC)
  n_in = imgs.shape[1]
  if n_in == size:
    return imgs.astype(np.float32, copy=False)
  a = _resize_matrix(n_in, size)
  out = np.einsum("oh,nhwc->nowc", a, imgs.astype(np.float32, copy=False), optimize=True)
  return np.einsum("pw,nowc->nopc", a, out, optimize=True)


def to_channels(imgs_NxHxWxC: np.ndarray, channels: int, what: str) -> np.ndarray:
  """Converts 1/3/4-channel images to ``channels`` (1: luminance, 3: RGB)."""
  c = imgs_NxHxWxC.shape[-1]
  if c == 4:  # RGBA: the colour is what a GAN models, alpha is dropped.
    imgs_NxHxWxC, c = imgs_NxHxWxC[..., :3], 3
  if c == channels:
    return imgs_NxHxWxC
  if c == 3 and channels == 1:
    return imgs_NxHxWxC @ _LUMA[:, None]
  if c == 1 and channels == 3:
    return np.repeat(imgs_NxHxWxC, 3, axis=-1)
  raise DataError(
    f"{what}: cannot convert {c}-channel images to {channels} channels "
    f"(supported: 1, 3, 4 -> 1 or 3)."
  )


def as_nhwc(imgs: np.ndarray, what: str) -> np.ndarray:
  """``[N, H, W]`` / ``[N, H, W, C]`` / square-flattened ``[N, H*W]`` -> ``[N, H, W, C]``."""
  if imgs.ndim == 2:
    side = int(round(np.sqrt(imgs.shape[1])))
    if side * side != imgs.shape[1]:
      raise DataError(f"{what}: 2-D arrays must be [n, H*W] of square images; got {imgs.shape}.")
    return imgs.reshape(imgs.shape[0], side, side, 1)
  if imgs.ndim == 3:
    return imgs[..., None]
  if imgs.ndim == 4 and imgs.shape[-1] in (1, 3, 4):
    return imgs
  raise DataError(
    f"{what}: expected images [n, H, W] or [n, H, W, C] with C in 1/3/4 "
    f"(channels-last); got shape {imgs.shape}."
  )


@functools.lru_cache(maxsize=16)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
  """``[n, n]`` Gaussian blur along one axis; rows renormalised at the borders."""
  i = np.arange(n)
  m = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  return (m / m.sum(1, keepdims=True)).astype(np.float32)


def blur(imgs_NxHxWxC: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of float images (``sigma`` in pixels; 0 = unchanged).

  At the border the kernel is renormalised over the pixels inside the image, so
  a constant background stays constant.
  """
  if sigma < 0:
    raise DataError(f"blur sigma must be >= 0 pixels, got {sigma!r}.")
  if sigma == 0:
    return imgs_NxHxWxC
  _, h, w, _ = imgs_NxHxWxC.shape
  out = np.einsum("oh,nhwc->nowc", _gaussian_matrix(h, float(sigma)), imgs_NxHxWxC, optimize=True)
  return np.einsum("pw,nowc->nopc", _gaussian_matrix(w, float(sigma)), out, optimize=True)


def preprocess_images(
  imgs: np.ndarray,
  *,
  image_size: int,
  channels: int,
  invert: bool,
  blur_sigma: float = 0.0,
  what: str = "images",
) -> np.ndarray:
  """Raw images -> float32 ``[N, image_size, image_size, channels]`` in [-1, 1].

  Args:
    imgs: uint8 0..255 or float 0..1, ``[N, H, W(, C)]`` or ``[N, H*W]``.
    image_size: the model's side length; non-square images are centre-cropped.
    channels: 1 (grayscale) or 3 (RGB).
    invert: map ``x -> 1 - x`` first (Omniglot: strokes bright on a dark background).
    blur_sigma: Gaussian blur (pixels, at ``image_size``) after resizing; it
      softens 1-pixel binary strokes into something a small GAN can draw.
    what: names the images in error messages.
  """
  x = to_unit_range(as_nhwc(np.asarray(imgs), what), what)
  x = to_channels(x, channels, what)
  x = blur(resize(x, image_size), blur_sigma)
  if invert:
    x = 1.0 - x
  x = np.clip(x * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
  check_finite(x, what)
  return np.ascontiguousarray(x)


def preprocess_dataset(
  data: ClassDataset, *, image_size: int, channels: int, invert: bool, blur_sigma: float = 0.0
) -> ClassDataset:
  """Applies :func:`preprocess_images` to every class of ``data``."""
  images = [
    preprocess_images(
      x,
      image_size=image_size,
      channels=channels,
      invert=invert,
      blur_sigma=blur_sigma,
      what=f"class {n!r} of {data.source}",
    )
    for n, x in zip(data.names, data.images)
  ]
  return ClassDataset(list(data.names), images, list(data.groups), data.source)


def add_rotations(data: ClassDataset) -> ClassDataset:
  """Each class and its 90/180/270-degree rotations as 4 classes (Omniglot practice).

  A rotated class keeps the group (alphabet) of its original, so splits by group
  stay disjoint. Names get the suffix ``/rot90`` etc.
  """
  names, images, groups = [], [], []
  for n, x, g in zip(data.names, data.images, data.groups):
    for k in range(4):
      names.append(n if k == 0 else f"{n}/rot{90 * k}")
      images.append(x if k == 0 else np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))))
      groups.append(g)
  return ClassDataset(
    names, images, groups, data.source + " (+90/180/270-degree rotations as classes)"
  )


def jitter(
  imgs_NxHxWxC: np.ndarray,
  rng: np.random.Generator,
  *,
  max_shift: float = 2.0,
  max_degrees: float = 10.0,
) -> np.ndarray:
  """Small random affine jitter: per image a shift and a rotation, bilinear.

  Pixels that come from outside the image repeat the border (Omniglot's border
  is background). Deterministic given ``rng``.

  Args:
    imgs_NxHxWxC: float images.
    rng: numpy generator (the sampler passes its per-batch generator).
    max_shift: shifts uniform in ``[-max_shift, max_shift]`` pixels, per axis.
    max_degrees: rotations uniform in ``[-max_degrees, max_degrees]``.
  """
  n, h, w, c = imgs_NxHxWxC.shape
  theta = np.deg2rad(rng.uniform(-max_degrees, max_degrees, n)).astype(np.float32)
  shift = rng.uniform(-max_shift, max_shift, (n, 2)).astype(np.float32)
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = np.meshgrid(
    np.arange(h, dtype=np.float32) - cy, np.arange(w, dtype=np.float32) - cx, indexing="ij"
  )
  # Inverse map: output pixel -> source position (undo shift, then rotation).
  dy = yy[None] - shift[:, 0, None, None]
  dx = xx[None] - shift[:, 1, None, None]
  sy = np.clip(cos * dy + sin * dx + cy, 0, h - 1)
  sx = np.clip(-sin * dy + cos * dx + cx, 0, w - 1)
  fy, fx = np.floor(sy), np.floor(sx)
  wy, wx = (sy - fy)[..., None], (sx - fx)[..., None]
  y0, x0 = fy.astype(np.int32), fx.astype(np.int32)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  # One flat gather per corner is much faster than take_along_axis.
  flat = imgs_NxHxWxC.astype(np.float32, copy=False).reshape(n * h * w, c)
  base = (np.arange(n, dtype=np.int32) * (h * w))[:, None, None]
  r0, r1 = base + y0 * w, base + y1 * w
  top = flat[r0 + x0] * (1 - wx) + flat[r0 + x1] * wx
  bottom = flat[r1 + x0] * (1 - wx) + flat[r1 + x1] * wx
  return top * (1 - wy) + bottom * wy
