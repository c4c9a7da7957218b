"""Save and restore any pytree of arrays (a ``MetaState``, ``GanParams``) with orbax.

The tree's structure comes from ``like`` at restore time, so NamedTuples,
flax dataclasses and optax states come back as they were saved; only the
leaves are written, as the flat dict of :func:`leaf_dict` (the layout of the
experiments' checkpoints too, which orbax's standard handler takes for any tree).

Example::

  state = mg.init(key, config)
  mg.checkpoint.save("/tmp/run/ckpt", state)
  restored = mg.checkpoint.restore("/tmp/run/ckpt", like=mg.init(key, config))

Multi-step runs with retention and resume use orbax's ``CheckpointManager``
directly (see ``experiments/train_lib.py``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

__all__ = ["leaf_dict", "restore", "save"]

PyTree = Any


def _key(i: int) -> str:
  return f"leaf_{i:05d}"


def leaf_dict(tree: PyTree) -> dict:
  """The leaves of ``tree`` as ``{"leaf_00000": x0, "leaf_00001": x1, ...}``, in flattening order."""
  return {_key(i): x for i, x in enumerate(jax.tree.leaves(tree))}


def save(directory: str | os.PathLike, tree: PyTree, *, force: bool = False) -> None:
  """Writes the arrays of ``tree`` to ``directory`` (which must not exist unless ``force``).

  Args:
    directory: where to write; made absolute (orbax needs an absolute path).
    tree: any pytree of arrays, e.g. a :class:`metagan_jax.MetaState`.
    force: overwrite an existing checkpoint at ``directory``.

  Raises:
    FileExistsError: ``directory`` exists and ``force`` is False.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.fspath(directory))
  if os.path.exists(path) and not force:
    raise FileExistsError(
      f"checkpoint directory {path} exists; pass force=True to overwrite it, or choose another."
    )
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, leaf_dict(tree), force=force)


def restore(directory: str | os.PathLike, like: PyTree) -> PyTree:
  """Reads a checkpoint written by :func:`save` into the structure of ``like``.

  Args:
    directory: the checkpoint's directory.
    like: a tree of the saved structure (e.g. a freshly initialised state);
      its leaves give the shapes and dtypes, and are not modified.

  Returns:
    A tree like ``like`` with the saved arrays.

  Raises:
    FileNotFoundError: nothing was saved at ``directory``.
    ValueError: the saved arrays do not match ``like``'s leaves.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint at {path}; write one with metagan_jax.checkpoint.save.")
  leaves, treedef = jax.tree.flatten(like)
  target = {
    _key(i): jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x))
    for i, x in enumerate(leaves)
  }
  with ocp.StandardCheckpointer() as ckptr:
    try:
      out = ckptr.restore(path, target)
    except (ValueError, KeyError) as e:
      raise ValueError(
        f"the checkpoint at {path} does not match `like` ({len(leaves)} arrays): was it saved "
        f"from a state of another model or algorithm? ({e})"
      ) from e
  return jax.tree.unflatten(treedef, [out[_key(i)] for i in range(len(leaves))])
