"""Few-shot task data: sources, splits, preprocessing and the task sampler.

Typical use::

  from metagan_jax import data
  sampler = data.make_sampler("omniglot", "train", T=8, K=5, Q=5, seed=0)
  for tasks in sampler.prefetch():   # metagan_jax.Tasks on the device
    ...
  saved = sampler.state()            # resume: sampler.restore(saved)

Nothing here imports TensorFlow; only the TFDS source does, when used.
"""

from metagan_jax.data.api import AUDIO_NAMES, load_split, make_sampler
from metagan_jax.data.audio import (
  find_fsdd,
  load_audio_folder,
  load_fsdd,
  load_tfds_spoken_digit,
  read_audio,
)
from metagan_jax.data.folder import load_folder, load_npz, save_npz
from metagan_jax.data.omniglot import find_omniglot28, load_omniglot, load_omniglot28
from metagan_jax.data.prefetch import Prefetcher
from metagan_jax.data.preprocess import (
  add_rotations,
  blur,
  jitter,
  preprocess_dataset,
  preprocess_images,
)
from metagan_jax.data.sampler import TaskSampler
from metagan_jax.data.sources import ClassDataset, DataError
from metagan_jax.data.splits import (
  OMNIGLOT_VAL_ALPHABETS,
  class_split,
  fold_split,
  omniglot_split,
  read_split,
  write_split,
)

__all__ = [
  "AUDIO_NAMES",
  "OMNIGLOT_VAL_ALPHABETS",
  "ClassDataset",
  "DataError",
  "Prefetcher",
  "TaskSampler",
  "add_rotations",
  "blur",
  "class_split",
  "find_fsdd",
  "find_omniglot28",
  "fold_split",
  "jitter",
  "load_audio_folder",
  "load_folder",
  "load_fsdd",
  "load_npz",
  "load_omniglot",
  "load_omniglot28",
  "load_split",
  "load_tfds_spoken_digit",
  "make_sampler",
  "omniglot_split",
  "preprocess_dataset",
  "preprocess_images",
  "read_audio",
  "read_split",
  "save_npz",
  "write_split",
]
