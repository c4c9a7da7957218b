"""Task batches: the unit a meta-step consumes."""

from typing import NamedTuple

import jax

__all__ = [
  "Tasks",
]


class Tasks(NamedTuple):
  """A batch of few-shot generation tasks.

  Attributes:
    support: ``[T, K, *data_shape]`` float images (or vectors) a GAN adapts on.
    query: ``[T, Q, *data_shape]`` float samples of the same classes, used by
      the meta-objective (MAML family) or for monitoring (Reptile).
  """

  support: jax.Array
  query: jax.Array
