"""Background prefetch: batches are made and put on the device ahead of use."""

from __future__ import annotations

import queue
import threading

import jax

__all__ = [
  "Prefetcher",
]

_POLL_S = 0.05


class _Failure:
  def __init__(self, exc: BaseException):
    self.exc = exc


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
  while not stop.is_set():
    try:
      q.put(item, timeout=_POLL_S)
      return True
    except queue.Full:
      pass
  return False


def _work(
  sampler, step: int, q: queue.Queue, stop: threading.Event, device_put: bool, sharding
) -> None:
  try:
    while not stop.is_set():
      tasks = sampler.batch(step)
      if device_put:
        tasks = jax.block_until_ready(jax.device_put(tasks, sharding))
      if not _put(q, stop, (step, tasks)):
        return
      step += 1
  except BaseException as e:  # Handed to the consumer, which re-raises it.
    _put(q, stop, _Failure(e))


class Prefetcher:
  """Iterates a :class:`~metagan_jax.data.sampler.TaskSampler` from its ``step``,
  with a thread that samples ``size`` batches ahead and ``jax.device_put`` s them.

  Only the consumer moves ``sampler.step`` (to one past the batch handed out),
  so ``sampler.state()`` is the exact resume point even with batches in flight.
  Errors in the thread are re-raised by ``next``. Use as a context manager, or
  call :meth:`close`; the thread is a daemon and never blocks interpreter exit.

  Args:
    sampler: the sampler (its :meth:`~metagan_jax.data.sampler.TaskSampler.batch` is
      pure, so the thread may call it).
    size: batches queued ahead.
    sharding: optional ``jax.sharding.Sharding`` (or pytree of them) for
      ``jax.device_put``; default the default device.
    device_put: False keeps numpy arrays (host prefetch only).
  """

  def __init__(self, sampler, size: int = 2, sharding=None, device_put: bool = True):
    if size < 1:
      raise ValueError(f"prefetch size must be >= 1, got {size}.")
    self._sampler = sampler
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    # The thread gets no reference to self, so an unclosed Prefetcher can still
    # be garbage-collected, and __del__ then stops the thread.
    self._thread = threading.Thread(
      target=_work,
      args=(sampler, sampler.step, self._queue, self._stop, device_put, sharding),
      daemon=True,
      name="metagan_jax-prefetch",
    )
    self._thread.start()

  def __iter__(self) -> Prefetcher:
    return self

  def __next__(self):
    while True:
      if self._stop.is_set():
        raise StopIteration
      try:
        item = self._queue.get(timeout=_POLL_S)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError("prefetch thread ended without a batch or an error.") from None
    if isinstance(item, _Failure):
      self.close()
      raise item.exc
    step, tasks = item
    self._sampler.step = step + 1
    return tasks

  def close(self) -> None:
    """Stops the thread and drops queued batches; the sampler keeps its step."""
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    if getattr(self, "_thread", None) is not None:
      self._stop.set()
