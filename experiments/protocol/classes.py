"""Stage 2, the classes: the fixed unseen test classes and the validation classes that
tuning uses, each with K support images and a held-out reference."""

from __future__ import annotations

import json
import os

import numpy as np

from experiments import train_lib

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CLASSES_FILE = os.path.join(HERE, "omniglot_test_classes.json")


def test_classes(config, verbose: bool = True) -> dict:
  """The fixed test classes with their support / held-out images.

  Returns a dict: ``names [C]``, ``support [C, K, 28, 28, 1]``,
  ``heldout [C, H, 28, 28, 1]`` and the image indices used.
  """
  with open(TEST_CLASSES_FILE) as f:
    names = json.load(f)["classes"][: config.eval.num_classes]
  split = train_lib.load_split(config, "test", verbose=verbose)
  missing = [n for n in names if n not in split.names]
  if missing:
    raise ValueError(
      f"test classes {missing[:3]} (from {TEST_CLASSES_FILE}) are not in the "
      f"{config.dataset!r} test split."
    )
  k = config.eval.k
  sup, held, idx = [], [], []
  for i, name in enumerate(names):
    x = split.images[split.names.index(name)]
    n_held = min(len(x) for x in split.images) - k
    if n_held < 2:
      raise ValueError(f"eval.k={k} leaves fewer than 2 held-out images in class {name!r}.")
    perm = np.random.default_rng([config.eval.split_seed, i]).permutation(len(x))
    sup.append(x[perm[:k]])
    held.append(x[perm[k : k + n_held]])
    idx.append({"support": perm[:k].tolist(), "heldout": perm[k : k + n_held].tolist()})
  return {"names": names, "support": np.stack(sup), "heldout": np.stack(held), "indices": idx}


def val_classes(config) -> dict:
  """``eval.tune_classes`` validation-alphabet classes, spread evenly over the alphabets."""
  split = train_lib.load_split(config, "val", verbose=False)
  rng = np.random.default_rng([config.eval.split_seed, 1])
  pick = spread_over_alphabets(split.groups, int(config.eval.tune_classes), rng)
  return support_heldout(split, pick, config.eval.k, rng)


def spread_over_alphabets(groups, n: int, rng: np.random.Generator) -> list[int]:
  """``min(n, len(groups))`` class indices, round robin over the alphabets (``groups``, one
  per class), each alphabet's classes in an order drawn from ``rng``."""
  alphabets = sorted(set(groups))
  by_alpha = {
    a: list(rng.permutation([i for i, g in enumerate(groups) if g == a])) for a in alphabets
  }
  pick = []
  while len(pick) < min(n, len(groups)):
    for a in alphabets:
      if by_alpha[a] and len(pick) < n:
        pick.append(int(by_alpha[a].pop()))
  return pick


def support_heldout(split, pick, k: int, rng: np.random.Generator) -> dict:
  """K support and the same number of held-out images of each class in ``pick``.

  Every class keeps as many held-out images as the smallest picked class has
  beyond K, so the reference sets stack; ``rng`` draws one permutation per class,
  in ``pick``'s order.
  """
  n_held = min(len(split.images[i]) for i in pick) - k
  sup, held = [], []
  for i in pick:
    perm = rng.permutation(len(split.images[i]))
    sup.append(split.images[i][perm[:k]])
    held.append(split.images[i][perm[k : k + n_held]])
  return {
    "names": [split.names[i] for i in pick],
    "support": np.stack(sup),
    "heldout": np.stack(held),
  }
