"""Omniglot from the offline 28x28 copy (no TensorFlow), with TFDS as fallback.

The offline copy (``omniglot28``) is two ``.npz`` files: ``train_small.npz``
(964 background classes, 30 alphabets) and ``test_small.npz`` (659 evaluation
classes, 20 alphabets), one uint8 ``(20, 784)`` array of 0/255 per class, keyed
``images_background/<Alphabet>/characterNN``. It is located, in order, through
the ``data_dir`` argument, the ``METAGAN_OMNIGLOT28_DIR`` environment variable,
then ``../shared/data/omniglot28`` beside the repository (relative to this
package, then to the working directory). It is never copied into the repo.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from metagan_jax.data.sources import ClassDataset, DataError, announce

__all__ = [
  "ENV_VAR",
  "FILES",
  "default_locations",
  "find_omniglot28",
  "load_omniglot28",
  "load_omniglot",
]

#: The environment variable naming the offline Omniglot folder.
ENV_VAR = "METAGAN_OMNIGLOT28_DIR"
#: The files of the offline Omniglot folder, by Omniglot split.
FILES = {"background": "train_small.npz", "evaluation": "test_small.npz"}
_DEFAULT_REL = Path("..") / "shared" / "data" / "omniglot28"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_locations() -> list[Path]:
  """Where the offline copy is looked for when neither argument nor env var is set."""
  return [(_REPO_ROOT / _DEFAULT_REL).resolve(), (Path.cwd() / _DEFAULT_REL).resolve()]


def _is_omniglot28(path: Path) -> bool:
  return all((path / f).is_file() for f in FILES.values())


def find_omniglot28(
  data_dir: str | os.PathLike | None = None, *, required: bool = True
) -> Path | None:
  """Returns the offline Omniglot directory.

  Args:
    data_dir: explicit directory; wins over the environment variable.
    required: if False, returns None instead of raising when nothing is found
      through the defaults (an explicit ``data_dir`` or env var that is wrong
      always raises: the user asked for it).

  Raises:
    DataError: the given/configured directory lacks the files, or (if
      ``required``) no default location holds them.
  """
  explicit = [(f"data_dir={str(data_dir)!r}", data_dir)] if data_dir is not None else []
  if not explicit and os.environ.get(ENV_VAR):
    explicit = [(f"{ENV_VAR}={os.environ[ENV_VAR]!r}", os.environ[ENV_VAR])]
  for how, d in explicit:
    path = Path(d).expanduser()
    if not path.exists():
      raise DataError(
        f"offline Omniglot: {how} does not exist; point it at the omniglot28 "
        f"folder holding {FILES['background']} and {FILES['evaluation']}."
      )
    if not _is_omniglot28(path):
      raise DataError(
        f"offline Omniglot: {how} lacks {FILES['background']} / "
        f"{FILES['evaluation']}; point it at the omniglot28 folder."
      )
    return path.resolve()
  for path in default_locations():
    if _is_omniglot28(path):
      return path
  if required:
    tried = ", ".join(str(p) for p in default_locations())
    raise DataError(
      f"offline Omniglot not found (tried {tried}); pass data_dir=..., set "
      f"{ENV_VAR}, or use dataset='tfds:omniglot'."
    )
  return None


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, mtime: float) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
  del mtime  # Part of the cache key only: a rewritten file is read again.
  try:
    with np.load(path, allow_pickle=False) as z:
      names = tuple(sorted(z.files))
      arrays = tuple(z[k] for k in names)
  except Exception as e:  # zipfile/OSError/ValueError: all mean "cannot read".
    raise DataError(f"cannot read offline Omniglot file {path}: {type(e).__name__}: {e}") from e
  for a in arrays:
    a.flags.writeable = False  # Shared through the cache.
  return names, arrays


def load_omniglot28(part: str, data_dir: str | os.PathLike | None = None) -> ClassDataset:
  """Reads one half of the offline copy.

  Args:
    part: ``"background"`` (meta-train/val) or ``"evaluation"`` (meta-test).
    data_dir: see :func:`find_omniglot28`.

  Returns:
    Raw uint8 ``[20, 28, 28, 1]`` per class (255 = white background), groups = alphabets.
  """
  if part not in FILES:
    raise DataError(f"Omniglot part must be one of {sorted(FILES)}, got {part!r}.")
  path = find_omniglot28(data_dir) / FILES[part]
  names, arrays = _read_npz(str(path), path.stat().st_mtime)
  images = []
  for n, a in zip(names, arrays):
    if a.ndim != 2 or a.shape[1] != 28 * 28:
      raise DataError(f"{path}: class {n!r} has shape {a.shape}, expected (n, 784).")
    images.append(a.reshape(-1, 28, 28, 1))
  groups = [n.split("/")[1] for n in names]
  return ClassDataset(list(names), images, groups, f"offline Omniglot {path}")


def load_omniglot(
  part: str, *, source: str = "auto", data_dir=None, download: bool = False, verbose: bool = True
) -> ClassDataset:
  """Omniglot ``part`` from the offline copy, or from TFDS when that is absent.

  Args:
    part: ``"background"`` or ``"evaluation"``.
    source: ``"auto"`` (offline if found, else TFDS), ``"offline"`` or ``"tfds"``.
    data_dir: the offline folder, or for TFDS its ``data_dir``. In ``"auto"``
      mode a ``data_dir`` holding the offline files selects the offline copy.
    download: allow TFDS to download and prepare the data.
    verbose: print which source was used (one line, stderr).
  """
  if source not in ("auto", "offline", "tfds"):
    raise DataError(f"Omniglot source must be 'auto', 'offline' or 'tfds', got {source!r}.")
  if source == "auto":
    if data_dir is not None and _is_omniglot28(Path(data_dir).expanduser()):
      path = Path(data_dir).expanduser().resolve()
    else:
      path = find_omniglot28(None, required=False)
    if path is None:
      announce(
        "offline Omniglot not found (tried "
        + ", ".join(map(str, default_locations()))
        + f", {ENV_VAR} unset); falling back to TFDS omniglot.",
        verbose,
      )
      source, tfds_dir = "tfds", data_dir
    else:
      source, data_dir = "offline", path
  elif source == "tfds":
    tfds_dir = data_dir
  if source == "offline":
    data = load_omniglot28(part, data_dir)
  else:
    from metagan_jax.data import tfds_source  # TensorFlow only on this path.

    data = tfds_source.load_tfds_omniglot(part, data_dir=tfds_dir, download=download)
  announce(f"Omniglot {part}: {len(data)} classes from {data.source}", verbose)
  return data
