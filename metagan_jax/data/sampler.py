"""Fast, deterministic, restartable few-shot task sampler.

A split is packed once into one float32 array ``[num_classes, max_n, H, W, C]``
(shorter classes padded, with per-class counts), so a batch is a couple of
numpy fancy-indexing gathers. Batch ``i`` is a pure function of
``(seed, process_index, i)``: restarting from a saved position is exact, and
each host of a multi-host run (distinct ``process_index``) samples its own tasks.
"""

from __future__ import annotations

import numpy as np

from metagan_jax.data import preprocess as pp
from metagan_jax.data.sources import ClassDataset, DataError
from metagan_jax.tasks import Tasks

__all__ = [
  "TaskSampler",
]

# Up to this many images per class the per-image random keys are drawn for the
# whole batch at once; bigger classes (MNIST's ~7000) draw per task instead.
_VECTOR_MAX_N = 256


class TaskSampler:
  """Yields :class:`~metagan_jax.tasks.Tasks` of ``T`` tasks, ``K`` support and ``Q`` query.

  Each task takes ``K + Q`` distinct images of one class (or, with
  ``classes_per_task=m > 1``, of the union of ``m`` distinct classes), the
  first ``K`` as support, the rest as query. The ``T`` classes of a batch are
  distinct when the split has at least ``T * m`` classes.

  Iterating advances :attr:`step`; :meth:`state` / :meth:`restore` save and
  resume it; :meth:`batch` gives any batch directly.

  Attributes:
    step: the index of the batch that iterating hands out next.
  """

  def __init__(
    self,
    data: ClassDataset,
    T: int,
    K: int,
    Q: int,
    *,
    seed: int = 0,
    classes_per_task: int = 1,
    jitter: bool = False,
    jitter_shift: float = 2.0,
    jitter_degrees: float = 10.0,
    process_index: int = 0,
    start_step: int = 0,
  ):
    """Checks everything and packs the images; raises :class:`DataError` on bad input.

    Args:
      data: a preprocessed split (float32 in [-1, 1], see ``load_split``).
      T, K, Q: tasks per batch, support and query images per task.
      seed: the sampling seed.
      classes_per_task: classes mixed into one task (1 = the usual one-class task).
      jitter: small random affine jitter of every image (shift/rotation, numpy).
      jitter_shift, jitter_degrees: its ranges, in pixels and degrees.
      process_index: this host's index; hosts with distinct indices draw distinct tasks.
      start_step: the position to start from (same as ``restore``).
    """
    for k, v, lo in (
      ("T", T, 1),
      ("K", K, 1),
      ("Q", Q, 0),
      ("classes_per_task", classes_per_task, 1),
      ("seed", seed, 0),
      ("process_index", process_index, 0),
      ("start_step", start_step, 0),
    ):
      if not isinstance(v, (int, np.integer)) or v < lo:
        raise DataError(f"{k} must be an integer >= {lo}, got {v!r}.")
    if len(data) == 0:
      raise DataError(
        f"no classes to sample from {data.source or 'this split'} (empty split); "
        f"use another split, split='all', or add classes."
      )
    if len(data) < classes_per_task:
      raise DataError(
        f"classes_per_task={classes_per_task} but the split has only {len(data)} classes."
      )
    self.T, self.K, self.Q = int(T), int(K), int(Q)
    self.seed, self.process_index = int(seed), int(process_index)
    self.classes_per_task = int(classes_per_task)
    self.jitter = bool(jitter)
    self.jitter_shift, self.jitter_degrees = float(jitter_shift), float(jitter_degrees)
    self.names = list(data.names)
    self.step = int(start_step)

    counts = data.counts
    n = self.K + self.Q
    if self.classes_per_task == 1:
      small = np.flatnonzero(counts < n)
      if small.size:
        i = int(small[np.argmin(counts[small])])
        raise DataError(
          f"K + Q = {self.K} + {self.Q} = {n} exceeds the {counts[i]} images of class "
          f"{data.names[i]!r} ({small.size} of {len(data)} classes have fewer than {n}); "
          f"lower K or Q, or drop small classes."
        )
    else:
      smallest = np.sort(counts)[: self.classes_per_task]
      if smallest.sum() < n:
        raise DataError(
          f"K + Q = {n} exceeds the {smallest.sum()} images of the "
          f"{self.classes_per_task} smallest classes; lower K or Q."
        )
    shapes = {x.shape[1:] for x in data.images}
    if len(shapes) != 1:
      raise DataError(f"classes of {data.source} have different image shapes {sorted(shapes)}.")
    for name, x in zip(data.names, data.images):
      if x.dtype != np.float32:
        raise DataError(
          f"class {name!r} is {x.dtype}; the sampler takes preprocessed float32 "
          f"images (use load_split or preprocess.preprocess_dataset)."
        )
    self.image_shape = shapes.pop()
    self.counts_C = counts
    self._max_n = int(counts.max())
    self.imgs_CxNxHxWxC = np.zeros((len(data), self._max_n, *self.image_shape), np.float32)
    for c, x in enumerate(data.images):
      self.imgs_CxNxHxWxC[c, : len(x)] = x

  @property
  def num_classes(self) -> int:
    return len(self.names)

  def _rng(self, step: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, self.process_index, step])

  def _pick_classes(self, rng: np.random.Generator, size: int) -> np.ndarray:
    if self.num_classes >= size:
      return rng.choice(self.num_classes, size, replace=False)
    return rng.integers(0, self.num_classes, size)

  def indices(
    self, step: int, rng: np.random.Generator | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Class and image indices of batch ``step``: two ``int[T, K + Q]`` arrays."""
    rng = self._rng(step) if rng is None else rng
    T, n = self.T, self.K + self.Q
    if self.classes_per_task == 1:
      cls_T = self._pick_classes(rng, T)
      cls_TxN = np.repeat(cls_T[:, None], n, axis=1)
      if self._max_n <= _VECTOR_MAX_N:
        # Random keys, padding slots pushed last: the first n of the argsort
        # are n distinct real images in random order.
        keys = rng.random((T, self._max_n))
        keys[np.arange(self._max_n)[None, :] >= self.counts_C[cls_T][:, None]] = 2.0
        idx_TxN = np.argsort(keys, axis=1)[:, :n]
      else:
        idx_TxN = np.stack([rng.choice(self.counts_C[c], n, replace=False) for c in cls_T.tolist()])
      return cls_TxN, idx_TxN
    m = self.classes_per_task
    cls_Txm = self._pick_classes(rng, T * m).reshape(T, m)
    cls_TxN = np.empty((T, n), np.int64)
    idx_TxN = np.empty((T, n), np.int64)
    for t, cs in enumerate(cls_Txm.tolist()):
      # Uniform over the pooled images of the m classes, without replacement.
      ends = np.cumsum(self.counts_C[cs])
      flat = rng.choice(int(ends[-1]), n, replace=False)
      which = np.searchsorted(ends, flat, side="right")
      cls_TxN[t] = np.asarray(cs)[which]
      idx_TxN[t] = flat - (ends - self.counts_C[cs])[which]
    return cls_TxN, idx_TxN

  def batch(self, step: int) -> Tasks:
    """Batch number ``step`` (a pure function of seed, process_index and step)."""
    rng = self._rng(step)
    cls_TxN, idx_TxN = self.indices(step, rng)
    K = self.K
    support = self.imgs_CxNxHxWxC[cls_TxN[:, :K], idx_TxN[:, :K]]
    query = self.imgs_CxNxHxWxC[cls_TxN[:, K:], idx_TxN[:, K:]]
    if self.jitter:
      support, query = (
        pp.jitter(
          x.reshape(-1, *self.image_shape),
          rng,
          max_shift=self.jitter_shift,
          max_degrees=self.jitter_degrees,
        ).reshape(x.shape)
        for x in (support, query)
      )
    return Tasks(support=support, query=query)

  def __iter__(self) -> TaskSampler:
    return self

  def __next__(self) -> Tasks:
    tasks = self.batch(self.step)
    self.step += 1
    return tasks

  def state(self) -> dict:
    """The position to save with a checkpoint (JSON-serialisable)."""
    return {"step": self.step, "seed": self.seed, "process_index": self.process_index}

  def restore(self, state: dict) -> None:
    """Continues from a saved :meth:`state` (the seed must match)."""
    if int(state.get("seed", self.seed)) != self.seed:
      raise DataError(
        f"sampler state was saved with seed {state['seed']}, this sampler has "
        f"seed {self.seed}; build it with the saved seed."
      )
    self.step = int(state["step"])

  def prefetch(self, size: int = 2, sharding=None, device_put: bool = True):
    """Iterates from :attr:`step` with batches made ahead on a background thread.

    See :class:`metagan_jax.data.prefetch.Prefetcher`; :attr:`step` and
    :meth:`state` keep counting the batches actually handed out.
    """
    from metagan_jax.data.prefetch import Prefetcher  # pylint: disable=g-import-not-at-top

    return Prefetcher(self, size=size, sharding=sharding, device_put=device_put)
