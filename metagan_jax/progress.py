"""Progress reports that read well on a terminal and in a log file.

On a terminal, :class:`Progress` draws a tqdm bar, redrawn in place. Anywhere
else (output redirected to a file, a pipe, a scheduler's log) a redrawn bar is a
single line of carriage returns that grows with every redraw, so
:class:`Progress` writes one plain line instead, at most every
``interval_s`` seconds and once at the end, flushed at once and never with a
``\\r``. The lines of a pre-training run of ``experiments/configs/tiny.py`` (3
steps, the first one compiling), with stderr redirected to a file::

  [pretrain seed 0] step 1/3 (33%)  23.95 s/it  d 4.566 g 0.056  eta 48s
  [pretrain seed 0] step 3/3 (100%)  8.15 s/it  d 4.361 g 0.026  done in 24s

The interval defaults to 10 s; ``$METAGAN_LOG_INTERVAL_S`` sets another (``0``:
a line at every update). Without tqdm installed, a terminal gets the plain
lines too.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["INTERVAL_ENV", "DEFAULT_INTERVAL_S", "Progress", "format_line"]

#: The environment variable that sets the least seconds between two plain lines.
INTERVAL_ENV = "METAGAN_LOG_INTERVAL_S"
#: Seconds between two plain lines when neither the argument nor the variable sets them.
DEFAULT_INTERVAL_S = 10.0


def _duration(s: float) -> str:
  """``38s``, ``4m05s``, ``1h02m``: a short human duration."""
  if not math.isfinite(s):
    return "?"
  s = max(0, int(round(s)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(per_s: float, unit: str) -> str:
  """``2.13 it/s`` at one or more per second, else ``4.70 s/it``."""
  if per_s <= 0 or not math.isfinite(per_s):
    return f"? {unit}/s"
  if per_s >= 1:
    return f"{per_s:.2f} {unit}/s"
  return f"{1 / per_s:.2f} s/{unit}"


def format_line(
  desc: str,
  n: int,
  total: int | None,
  per_s: float,
  postfix: str = "",
  *,
  eta_s: float | None = None,
  elapsed_s: float | None = None,
  unit: str = "it",
) -> str:
  """One plain progress line.

  Args:
    desc: what is running, shown in brackets (e.g. ``"reptile seed 0"``).
    n: steps done.
    total: steps in all, or None when unknown.
    per_s: the recent rate, steps per second.
    postfix: the latest values (losses), already formatted.
    eta_s: the estimated time left, shown as ``eta ...``.
    elapsed_s: the time taken, shown as ``done in ...`` (for the last line;
      ``stopped after ...`` when fewer than ``total`` steps were done).
    unit: what a step is called in the rate.

  Returns:
    The line, without a newline and without any carriage return.
  """
  parts = [f"[{desc}] step {n}" + (f"/{total}" if total else "")]
  if total:
    parts[0] += f" ({100 * n / total:.0f}%)"
  parts.append(_rate(per_s, unit))
  if postfix:
    parts.append(postfix)
  if elapsed_s is not None:
    finished = not total or n >= total
    parts.append(("done in " if finished else "stopped after ") + _duration(elapsed_s))
  elif eta_s is not None:
    parts.append(f"eta {_duration(eta_s)}")
  return "  ".join(parts).replace("\r", " ").replace("\n", " ")


def _interval_from_env() -> float:
  value = os.environ.get(INTERVAL_ENV, "")
  try:
    return max(0.0, float(value)) if value.strip() else DEFAULT_INTERVAL_S
  except ValueError:
    return DEFAULT_INTERVAL_S


class Progress:
  """A tqdm bar on a terminal; plain, throttled lines anywhere else.

  The interface is the part of tqdm's that the library and the experiments
  use: :meth:`update`, :meth:`set_postfix`, :meth:`set_postfix_str` and
  :meth:`close` (also as a context manager).

  Args:
    total: steps in all (None: unknown).
    desc: what is running, the bar's label and the lines' prefix.
    initial: steps already done (a resumed run).
    file: the stream to write to (default ``sys.stderr``, looked up when the
      object is made).
    disable: write nothing at all.
    interval_s: the least time between two plain lines (default
      ``$METAGAN_LOG_INTERVAL_S``, else 10 s); the last line is always written.
    bar: draw the tqdm bar (True), write lines (False), or decide by whether
      ``file`` is a terminal (None, the default).
    unit: what a step is called in the rate.
    **tqdm_kwargs: passed to ``tqdm`` when a bar is drawn (e.g.
      ``dynamic_ncols=True``, ``mininterval=1.0``).
  """

  def __init__(
    self,
    total: int | None = None,
    desc: str = "",
    *,
    initial: int = 0,
    file: IO[str] | None = None,
    disable: bool = False,
    interval_s: float | None = None,
    bar: bool | None = None,
    unit: str = "it",
    **tqdm_kwargs: Any,
  ):
    self.total, self.desc, self.n, self.unit = total, desc, initial, unit
    self._initial = initial
    self.file = sys.stderr if file is None else file
    self.disable = disable
    self.interval_s = _interval_from_env() if interval_s is None else max(0.0, interval_s)
    self._postfix = ""
    self._closed = False
    self._bar = None
    if bar is None:
      isatty = getattr(self.file, "isatty", None)
      bar = bool(isatty and isatty())
    if bar and not disable:
      try:
        from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      except ImportError:  # a nicety: without tqdm, plain lines
        tqdm = None
      if tqdm is not None:
        self._bar = tqdm(
          total=total, initial=initial, desc=desc, file=self.file, unit=unit, **tqdm_kwargs
        )
    now = time.perf_counter()
    self._t0 = now
    self._last = (now, initial)  # (time, n) of the last line written, or of the start
    self._printed_n = None

  @property
  def is_bar(self) -> bool:
    """Whether a tqdm bar is drawn (rather than plain lines)."""
    return self._bar is not None

  def set_postfix(
    self, values: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any
  ) -> None:
    """Sets the values shown after the rate (e.g. the latest losses).

    Args:
      values: name -> value; numbers are shown with 3 decimals (strings as given).
      refresh: redraw the bar now (bar only; lines show the values on the next line).
      **kwargs: more name -> value pairs.
    """
    items = {**(values or {}), **kwargs}
    if self._bar is not None:
      self._bar.set_postfix(items, refresh=refresh)
      return
    self._postfix = " ".join(
      f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in items.items()
    )

  def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
    """Sets the text shown after the rate.

    Args:
      s: the text.
      refresh: redraw the bar now (bar only).
    """
    if self._bar is not None:
      self._bar.set_postfix_str(s, refresh=refresh)
      return
    self._postfix = str(s)

  def update(self, n: int = 1) -> None:
    """Records ``n`` more steps done; writes a line if ``interval_s`` has passed.

    Args:
      n: steps done since the last call.
    """
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
      return
    if self.disable:
      return
    now = time.perf_counter()
    if now - self._last[0] >= self.interval_s or (self.total and self.n >= self.total):
      self._write(now, final=bool(self.total and self.n >= self.total))

  def _write(self, now: float, final: bool) -> None:
    t_last, n_last = self._last
    recent = (self.n - n_last) / (now - t_last) if now > t_last else float("nan")
    if final:
      done = self.n - self._initial
      per_s = done / (now - self._t0) if now > self._t0 else recent
      line = format_line(
        self.desc,
        self.n,
        self.total,
        per_s,
        self._postfix,
        elapsed_s=now - self._t0,
        unit=self.unit,
      )
    else:
      left = (self.total - self.n) if self.total else None
      eta = left / recent if left is not None and recent > 0 else None
      line = format_line(
        self.desc, self.n, self.total, recent, self._postfix, eta_s=eta, unit=self.unit
      )
    self.file.write(line + "\n")
    self.file.flush()
    self._last = (now, self.n)
    self._printed_n = self.n

  def close(self) -> None:
    """Ends the report: closes the bar, or writes the last line if not written yet.

    A report with no step done (nothing to do, or a finished run resumed) writes
    no line.
    """
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    elif not self.disable and self._printed_n != self.n and self.n != self._initial:
      self._write(time.perf_counter(), final=True)

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
