"""Class splits: meta-train / validation / meta-test never share a class.

Omniglot uses its standard split by alphabet: background alphabets for
meta-train, minus :data:`OMNIGLOT_VAL_ALPHABETS` for validation; the evaluation
alphabets for meta-test. Other datasets get a seeded split of their classes
(by group when the source has groups), which :func:`write_split` saves as
``split.json`` next to a run so it can be audited.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metagan_jax.data.sources import ClassDataset, DataError

__all__ = [
  "SPLITS",
  "OMNIGLOT_VAL_ALPHABETS",
  "DEFAULT_FRACTIONS",
  "check_split_name",
  "omniglot_split",
  "class_split",
  "fold_split",
  "check_disjoint",
  "write_split",
  "read_split",
]

#: The split names (three disjoint sets of classes, and ``"all"`` of them).
SPLITS = ("train", "val", "test", "all")

#: 5 of the 30 background alphabets (128 of the 964 classes), drawn once with
#: ``np.random.default_rng(0).choice(30, 5, replace=False)`` over the sorted names,
#: and fixed here so every run validates on the same characters.
OMNIGLOT_VAL_ALPHABETS = (
  "Blackfoot_(Canadian_Aboriginal_Syllabics)",
  "Burmese_(Myanmar)",
  "Greek",
  "Inuktitut_(Canadian_Aboriginal_Syllabics)",
  "Malay_(Jawi_-_Arabic)",
)

#: The train, validation and test fractions of the classes (:func:`class_split`).
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def check_split_name(split: str) -> None:
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {SPLITS}.")


def omniglot_split(
  background: ClassDataset,
  evaluation: ClassDataset,
  val_alphabets: Sequence[str] = OMNIGLOT_VAL_ALPHABETS,
) -> dict[str, list[str]]:
  """Class names of the standard Omniglot split (by alphabet).

  Raises:
    DataError: a validation alphabet is not a background alphabet.
  """
  val = set(val_alphabets)
  unknown = sorted(val - set(background.groups))
  if unknown:
    raise DataError(
      f"validation alphabets {unknown} are not background alphabets of "
      f"{background.source}; choose among {sorted(set(background.groups))}."
    )
  return {
    "train": [n for n, g in zip(background.names, background.groups) if g not in val],
    "val": [n for n, g in zip(background.names, background.groups) if g in val],
    "test": list(evaluation.names),
  }


def class_split(
  data: ClassDataset, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
  """Seeded train/val/test split of the groups (= classes unless the source groups them).

  Each split gets ``round(fraction * num_groups)`` groups, val and test at least
  one when there are 3 or more groups; a permutation from ``seed`` decides which.
  """
  if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
    raise DataError(
      f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}."
    )
  groups = sorted(set(data.groups))
  n = len(groups)
  n_val, n_test = (int(round(f * n)) for f in fractions[1:])
  if n >= 3:
    n_val = max(n_val, 1 if fractions[1] > 0 else 0)
    n_test = max(n_test, 1 if fractions[2] > 0 else 0)
  n_test = min(n_test, n)
  n_val = min(n_val, n - n_test)
  perm = np.random.default_rng(seed).permutation(n)
  which = {}
  for rank, gi in enumerate(perm.tolist()):
    which[groups[gi]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
  return {
    s: [c for c, g in zip(data.names, data.groups) if which[g] == s]
    for s in ("train", "val", "test")
  }


def fold_split(
  data: ClassDataset, fold: int, order: Sequence[str] | None = None
) -> dict[str, list[str]]:
  """Leave-groups-out folds: fold ``f`` tests group ``f``, validates on group ``f + 1``.

  With few groups (FSDD's six speakers) every group takes each role once over
  the folds: fold ``f`` puts ``order[f]`` in ``test``, ``order[(f + 1) % n]`` in
  ``val`` and every other group in ``train``, so no speaker is in two roles.

  Args:
    data: the classes and their groups.
    fold: ``0 <= fold < n`` (n groups).
    order: the groups in fold order (default: sorted names).

  Raises:
    DataError: fewer than 3 groups, a fold out of range, or an ``order`` that is
      not the data's groups.
  """
  groups = sorted(set(data.groups)) if order is None else list(order)
  if sorted(groups) != sorted(set(data.groups)):
    raise DataError(
      f"fold order {groups} is not the groups of {data.source}: {sorted(set(data.groups))}."
    )
  n = len(groups)
  if n < 3:
    raise DataError(
      f"folds need at least 3 groups (test, validation, train); {data.source} has {n}: {groups}."
    )
  if not isinstance(fold, int | np.integer) or not 0 <= fold < n:
    raise DataError(f"fold must be an int in [0, {n}) for the {n} groups {groups}; got {fold!r}.")
  test, val = groups[fold], groups[(fold + 1) % n]
  role = {g: "test" if g == test else "val" if g == val else "train" for g in groups}
  return {
    s: [c for c, g in zip(data.names, data.groups) if role[g] == s]
    for s in ("train", "val", "test")
  }


def check_disjoint(splits: dict[str, list[str]]) -> None:
  """Raises :class:`DataError` if two splits share a class."""
  seen: dict[str, str] = {}
  for s, names in splits.items():
    if s == "all":
      continue
    for n in names:
      if n in seen and seen[n] != s:
        raise DataError(f"class {n!r} is in both split {seen[n]!r} and {s!r}.")
      seen[n] = s


def write_split(path: str | os.PathLike, splits: dict[str, list[str]], **info) -> Path:
  """Writes the split (and ``info``, e.g. dataset and seed) as JSON.

  Args:
    path: a run directory (the file is ``<path>/split.json``) or a ``.json`` file.
    splits: split name -> class names.
    **info: JSON-serialisable facts that make the split reproducible.

  Returns:
    The path written.
  """
  p = Path(path)
  if p.suffix != ".json":
    p.mkdir(parents=True, exist_ok=True)
    p = p / "split.json"
  else:
    p.parent.mkdir(parents=True, exist_ok=True)
  doc = dict(info, counts={s: len(v) for s, v in splits.items()}, splits=splits)
  p.write_text(json.dumps(doc, indent=1) + "\n")
  return p


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
  """Reads the ``splits`` of a file written by :func:`write_split`."""
  p = Path(path)
  p = p / "split.json" if p.is_dir() else p
  try:
    return json.loads(p.read_text())["splits"]
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f"cannot read split file {str(p)!r}: {e}") from e
