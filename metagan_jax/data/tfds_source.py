"""TFDS image-classification datasets as :class:`ClassDataset` (lazy TF import).

TensorFlow and ``tensorflow_datasets`` are imported inside these functions only,
so ``import metagan_jax.data`` works without them. Install with
``pip install 'metagan_jax[data]'``.
"""

from __future__ import annotations

import os

import numpy as np

from metagan_jax.data import preprocess as pp
from metagan_jax.data.sources import ClassDataset, DataError

__all__ = [
  "KNOWN",
  "import_tfds",
  "get_builder",
  "load_tfds",
  "load_tfds_omniglot",
]

#: Image classification datasets known to work as plain names; any other TFDS
#: dataset works as ``"tfds:<name>"``.
KNOWN = (
  "omniglot",
  "mnist",
  "emnist",
  "kmnist",
  "fashion_mnist",
  "cifar10",
  "cifar100",
  "svhn_cropped",
)


def import_tfds():
  """Imports ``tensorflow_datasets`` or raises a :class:`DataError` that says how to install it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
      "TFDS sources need tensorflow-datasets and tensorflow: pip install 'metagan_jax[data]' "
      "(or: pip install tensorflow-cpu tensorflow-datasets). The offline Omniglot copy, "
      f"folders and .npz files need neither. ({e})"
    ) from e
  return tfds


def get_builder(name: str, *, data_dir=None, download: bool = False):
  """A prepared TFDS builder for ``name``; never downloads unless ``download``.

  Raises:
    DataError: unknown name, data not prepared with ``download=False`` (says how
      to get it), or the download failed.
  """
  tfds = import_tfds()
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:
    raise DataError(
      f"unknown TFDS dataset {name!r}; see tfds.list_builders() for the names."
    ) from e
  if download:
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise DataError(
        f"TFDS could not download/prepare {name!r} into {builder.data_dir}: "
        f"{type(e).__name__}: {e}. Without network, run `tfds build {name} "
        f"--data_dir DIR` where there is one and copy DIR here."
      ) from e
  elif not builder.is_prepared():
    where = data_dir if data_dir is not None else "the default ~/tensorflow_datasets"
    raise DataError(
      f"TFDS data for {name!r} not found in data_dir={where} and download=False. Get it with "
      f"`tfds build {name} --data_dir DIR` (then pass data_dir=DIR), or pass download=True, "
      f"or point data_dir at a folder that already holds it."
    )
  return builder


def _read(
  builder, split: str, keys: tuple[str, ...], image_key: str, map_image=None, batch_size: int = 512
) -> dict[str, np.ndarray]:
  """Reads ``keys`` of every example of ``split`` into numpy arrays."""
  tfds = import_tfds()
  features = builder.info.features
  missing = [k for k in keys if k not in features]
  if missing:
    raise DataError(
      f"TFDS dataset {builder.name!r} has no feature {missing}; it has {sorted(features.keys())}."
    )
  fixed = None not in tuple(features[image_key].shape)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})
  if fixed:
    ds = ds.batch(batch_size)
  chunks = {k: [] for k in keys}
  shape = None
  for i, ex in enumerate(tfds.as_numpy(ds)):
    if not fixed:  # Variable-size images: one at a time, all must match.
      ex = {k: np.asarray(v)[None] for k, v in ex.items()}
      if shape is None:
        shape = ex[image_key].shape[1:]
      elif ex[image_key].shape[1:] != shape:
        raise DataError(
          f"TFDS {builder.name!r} example {i} has image shape "
          f"{ex[image_key].shape[1:]}, the first {shape}; images must share a size."
        )
    if map_image is not None:
      ex[image_key] = map_image(ex[image_key])
    for k in keys:
      chunks[k].append(np.asarray(ex[k]))
  if not chunks[image_key]:
    raise DataError(f"TFDS {builder.name!r} split {split!r} has no examples.")
  return {k: np.concatenate(v) for k, v in chunks.items()}


def _group(labels: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
  order = np.argsort(labels, kind="stable")
  uniq, starts = np.unique(labels[order], return_index=True)
  return uniq, np.split(images[order], starts[1:])


def load_tfds(
  name: str,
  *,
  data_dir=None,
  download: bool = False,
  split: str | None = None,
  image_key: str = "image",
  label_key: str = "label",
) -> ClassDataset:
  """Any TFDS image-classification dataset, grouped by label.

  Args:
    name: TFDS name, e.g. ``"mnist"``, ``"emnist/letters"``, ``"cifar10"``.
    data_dir: TFDS ``data_dir`` (default: TFDS's own, ``~/tensorflow_datasets``).
    download: allow downloading and preparing.
    split: TFDS split(s) to read, e.g. ``"train"``; default all splits joined,
      since meta-learning splits classes, not examples.
    image_key, label_key: feature names.

  Returns:
    Raw uint8 images per class; class names from the label's ClassLabel names.
  """
  builder = get_builder(name, data_dir=data_dir, download=download)
  if split is None:
    split = "+".join(builder.info.splits.keys()) or "train"
  ex = _read(builder, split, (image_key, label_key), image_key)
  labels, images = _group(ex[label_key], ex[image_key])
  try:
    label_names = builder.info.features[label_key].names
  except AttributeError:
    label_names = None
  names = [
    str(label_names[l]) if label_names and l < len(label_names) else str(l) for l in labels.tolist()
  ]
  return ClassDataset(names, images, None, f"TFDS {name} ({split}) from {builder.data_dir}")


def _omniglot_to_28(imgs_Nx105x105x3: np.ndarray) -> np.ndarray:
  # Same storage as the offline copy: grayscale uint8 28x28, white background.
  # Area averaging keeps thin strokes as gray levels (not re-binarised).
  x = pp.to_channels(imgs_Nx105x105x3.astype(np.float32), 1, "TFDS omniglot")
  x = pp.resize(x, 28)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_tfds_omniglot(part: str, *, data_dir=None, download: bool = False) -> ClassDataset:
  """TFDS Omniglot stored like the offline copy (names, alphabets, 28x28 uint8).

  TFDS ``train`` is the background set, ``test`` the evaluation set. Images
  (105x105x3) become grayscale and are area-resized to 28x28, so the rest of
  the pipeline (inversion, scaling, splits) is the same as for the offline copy.
  """
  tfds_split = {"background": "train", "evaluation": "test"}.get(part)
  if tfds_split is None:
    raise DataError(f"Omniglot part must be 'background' or 'evaluation', got {part!r}.")
  builder = get_builder("omniglot", data_dir=data_dir, download=download)
  ex = _read(
    builder,
    tfds_split,
    ("image", "alphabet", "alphabet_char_id"),
    "image",
    map_image=_omniglot_to_28,
  )
  alphabets = builder.info.features["alphabet"].names
  key = ex["alphabet"].astype(np.int64) * 100_000 + ex["alphabet_char_id"].astype(np.int64)
  keys, images = _group(key, ex["image"])
  names, groups = [], []
  for k in keys.tolist():
    alphabet = alphabets[k // 100_000]
    names.append(f"images_{part}/{alphabet}/character{k % 100_000 + 1:02d}")
    groups.append(alphabet)
  order = np.argsort(names)  # Same class order as the offline copy (sorted keys).
  return ClassDataset(
    [names[i] for i in order],
    [images[i] for i in order],
    [groups[i] for i in order],
    f"TFDS omniglot ({tfds_split}) from {builder.data_dir}",
  )
