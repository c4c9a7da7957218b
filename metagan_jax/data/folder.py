"""A user's own images: a folder of per-class sub-folders, or an ``.npz``.

Folder layout: ``root/<class>/<image files>``; a folder with images and no
sub-folders is one class (e.g. 30 photos of one's own style). ``.npz``: one
array per class, the key is the class name (``np.savez(path, **{name: imgs})``),
arrays ``[n, H, W]``, ``[n, H, W, C]`` or square-flattened ``[n, H*W]``, uint8
0..255 or float 0..1.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from metagan_jax.data import preprocess as pp
from metagan_jax.data.sources import ClassDataset, DataError, check_finite

__all__ = [
  "IMAGE_SUFFIXES",
  "load_folder",
  "load_npz",
  "save_npz",
]

#: The image file suffixes a folder source reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _existing(path, what: str) -> Path:
  p = Path(path).expanduser()
  if not p.exists():
    raise DataError(f"{what} {str(p)!r} does not exist; check the path (data_dir).")
  return p


def _image_files(folder: Path) -> list[Path]:
  return sorted(
    f
    for f in folder.iterdir()
    if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
  )


def _read_image(f: Path, channels: int | None, resize_to: int | None) -> np.ndarray:
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("reading image folders needs Pillow: pip install pillow") from e
  try:
    with Image.open(f) as im:
      im.load()
      mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if im.mode in _GRAY_MODES else "RGB")
      im = im.convert(mode)
      if resize_to is not None:
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((resize_to, resize_to), Image.LANCZOS)
      x = np.asarray(im, np.uint8)
  except Exception as e:  # PIL raises many types for corrupt/unknown files.
    raise DataError(f"cannot read image {f}: {type(e).__name__}: {e}") from e
  return x if x.ndim == 3 else x[..., None]


def load_folder(
  path: str | os.PathLike, *, channels: int | None = None, resize_to: int | None = None
) -> ClassDataset:
  """Reads ``path/<class>/<image>`` (or ``path/<image>`` as a single class).

  Args:
    path: the folder.
    channels: 1 or 3 to convert every image on reading (default: keep gray
      images gray, everything else RGB).
    resize_to: if set, centre-crop each image to a square and resize it to
      this side (for photos of mixed sizes); otherwise every image must have
      the same size.

  Raises:
    DataError: missing folder, no images, an unreadable image, or an image
      whose shape differs from the first one (names both files).
  """
  root = _existing(path, "image folder")
  if not root.is_dir():
    raise DataError(f"{str(root)!r} is not a folder (for an .npz file use dataset='npz').")
  class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
  if not class_dirs:
    class_dirs = [root]
  names, images = [], []
  ref = None  # (file, shape) of the first image: all must match it.
  for d in class_dirs:
    files = _image_files(d)
    if not files:
      raise DataError(f"class folder {str(d)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    imgs = []
    for f in files:
      x = _read_image(f, channels, resize_to)
      if ref is None:
        ref = (f, x.shape)
      elif x.shape != ref[1]:
        raise DataError(
          f"image {f} has shape {x.shape} (HxWxC), but {ref[0]} has {ref[1]}; all images "
          f"must share one size: resize them, or pass resize_each=True (load_split) / "
          f"resize_to=N (load_folder) to centre-crop and resize each image."
        )
      imgs.append(x)
    names.append(d.name)
    images.append(np.stack(imgs))
  return ClassDataset(names, images, None, f"image folder {root.resolve()}")


def load_npz(path: str | os.PathLike) -> ClassDataset:
  """Reads an ``.npz`` of per-class arrays (key = class name); see the module doc."""
  p = _existing(path, "npz file")
  if p.is_file() and not zipfile.is_zipfile(p):
    raise DataError(
      f"cannot read npz file {str(p)!r}: not an .npz (zip) archive; expected an .npz "
      f"written by np.savez with one image array per class."
    )
  try:
    with np.load(p, allow_pickle=False) as z:
      names = sorted(z.files)
      raw = [z[k] for k in names]
  except Exception as e:  # BadZipFile, OSError, ValueError (pickled objects): unreadable.
    raise DataError(
      f"cannot read npz file {str(p)!r}: {type(e).__name__}: {e}; expected an .npz "
      f"written by np.savez with one image array per class."
    ) from e
  if not names:
    raise DataError(f"npz file {str(p)!r} holds no arrays (one per class expected).")
  images, shape = [], None
  for n, a in zip(names, raw):
    what = f"class {n!r} in {p}"
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
      raise DataError(f"{what}: dtype {a.dtype} is not numeric.")
    check_finite(a, what)
    a = pp.as_nhwc(a, what)
    if len(a) == 0:
      raise DataError(f"{what} holds no images.")
    if shape is None:
      shape = (n, a.shape[1:])
    elif a.shape[1:] != shape[1]:
      raise DataError(
        f"{what} has images of shape {a.shape[1:]}, but class {shape[0]!r} has "
        f"{shape[1]}; all classes must share one image size."
      )
    images.append(a)
  groups = [n.rsplit("/", 1)[0] if "/" in n else n for n in names]
  return ClassDataset(names, images, groups, f"npz file {p.resolve()}")


def save_npz(path: str | os.PathLike, data: ClassDataset) -> None:
  """Writes ``data`` as an ``.npz`` that :func:`load_npz` reads back."""
  np.savez(path, **dict(zip(data.names, data.images)))
