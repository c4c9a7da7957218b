"""The one interface every source yields: images grouped by class.

A source (offline Omniglot, TFDS, a folder, an ``.npz``) returns a
:class:`ClassDataset`; splitting, preprocessing and the task sampler only ever
see that. Raw sources hold uint8 (0..255) or float (0..1) images; after
:func:`metagan_jax.data.preprocess.preprocess_dataset` they hold float32 in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  "DataError",
  "ClassDataset",
  "announce",
  "check_finite",
]


class DataError(ValueError):
  """Bad data input: says what is wrong, with which value, and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ClassDataset:
  """Images grouped by class.

  Attributes:
    names: one unique name per class, e.g. ``images_background/Greek/character03``.
    images: per class an array ``[n_i, H, W, C]`` (all classes share H, W, C;
      the counts ``n_i`` may differ). A raw audio source holds clips
      ``[n_i, num_samples]`` instead, until :func:`metagan_jax.data.audio.to_spectrograms`
      makes them ``[n_i, n_mels, frames, 1]``.
    groups: per class the group it belongs to (the Omniglot alphabet); splits
      never cut a group. Defaults to the class names (every class its own group).
    source: where the images came from, in words (shown to the user, logged).
    spectrogram: for sound, the :class:`metagan_jax.audio.Spectrogram` that made
      the images (``decode`` turns a model's outputs back into clips); None for images.
  """

  names: list[str]
  images: list[np.ndarray]
  groups: list[str] = None  # type: ignore[assignment]
  source: str = ""
  spectrogram: Any = None

  def __post_init__(self):
    if self.groups is None:
      object.__setattr__(self, "groups", list(self.names))
    if not len(self.names) == len(self.images) == len(self.groups):
      raise DataError(
        f"ClassDataset needs one name, image array and group per class; got "
        f"{len(self.names)} names, {len(self.images)} arrays, {len(self.groups)} groups."
      )
    if len(set(self.names)) != len(self.names):
      dup = sorted({n for n in self.names if self.names.count(n) > 1})[:3]
      raise DataError(f"class names must be unique; repeated: {dup}")

  def __len__(self) -> int:
    return len(self.names)

  @property
  def counts(self) -> np.ndarray:
    """Images per class, ``int64[num_classes]``."""
    return np.array([len(x) for x in self.images], np.int64)

  @property
  def modality(self) -> str:
    """``"audio"`` for spectrograms of sound, else ``"image"``."""
    return "image" if self.spectrogram is None else "audio"

  @property
  def image_shape(self) -> tuple[int, ...]:
    """``(H, W, C)`` of one image (of the first class)."""
    if not self.images:
      raise DataError(f"dataset from {self.source or 'unknown source'} has no classes.")
    return tuple(self.images[0].shape[1:])

  def select(self, names: Sequence[str], source: str | None = None) -> ClassDataset:
    """Returns the classes called ``names``, in that order."""
    index = {n: i for i, n in enumerate(self.names)}
    missing = [n for n in names if n not in index]
    if missing:
      raise DataError(f"classes not in {self.source or 'the dataset'}: {missing[:5]}")
    idx = [index[n] for n in names]
    return ClassDataset(
      names=[self.names[i] for i in idx],
      images=[self.images[i] for i in idx],
      groups=[self.groups[i] for i in idx],
      source=self.source if source is None else source,
      spectrogram=self.spectrogram,
    )


def announce(message: str, verbose: bool = True) -> None:
  """Prints one line that tells the user which data is used (stderr)."""
  if verbose:
    print(f"[metagan_jax.data] {message}", file=sys.stderr, flush=True)


def check_finite(imgs: np.ndarray, what: str) -> None:
  """Raises :class:`DataError` if float ``imgs`` hold NaN or inf."""
  if np.issubdtype(imgs.dtype, np.floating):
    bad = int(np.size(imgs) - np.count_nonzero(np.isfinite(imgs)))
    if bad:
      raise DataError(
        f"{what} has {bad} non-finite values (NaN or inf); clean or drop those images."
      )
