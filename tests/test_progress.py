"""Progress reports: a tqdm bar on a terminal, plain throttled lines in a log file."""

import io
import re

import pytest

from metagan_jax import progress


class _Clock:
  """A fake ``time`` module whose perf_counter the test advances by hand."""

  def __init__(self):
    self.now = 100.0

  def perf_counter(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.fixture
def clock(monkeypatch):
  c = _Clock()
  monkeypatch.setattr(progress, "time", c)
  monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
  return c


def _run(stream, clock, steps=100, dt=0.5, **kwargs):
  bar = progress.Progress(total=steps, desc="reptile seed 0", file=stream, **kwargs)
  for i in range(steps):
    clock.now += dt
    bar.set_postfix({"d_loss": f"{0.5 + i / 1000:.3f}", "g_loss": 1.21}, refresh=False)
    bar.update(1)
  bar.close()
  return bar


def test_log_file_gets_plain_throttled_lines(clock):
  log = io.StringIO()  # not a terminal
  bar = _run(log, clock)  # 100 steps of 0.5 s: 50 s in all, default interval 10 s
  text = log.getvalue()
  assert not bar.is_bar
  assert "\r" not in text and "\x1b" not in text  # no redraws, no terminal escapes
  lines = text.splitlines()
  assert text.endswith("\n")
  assert len(lines) == 5, lines  # at 10, 20, 30 and 40 s, then the last one
  for line in lines[:-1]:
    assert re.fullmatch(
      r"\[reptile seed 0\] step \d+/100 \(\d+%\)  2\.00 it/s  d_loss 0\.\d{3} g_loss 1\.210  eta \d+s",
      line,
    ), line
  assert lines[0].startswith("[reptile seed 0] step 20/100 (20%)")
  assert lines[0].endswith("eta 40s")
  assert (
    lines[-1]
    == "[reptile seed 0] step 100/100 (100%)  2.00 it/s  d_loss 0.599 g_loss 1.210  done in 50s"
  )
  assert max(len(line) for line in lines) < 120


def test_interval_is_configurable(clock, monkeypatch):
  log = io.StringIO()
  _run(log, clock, steps=10, dt=1.0, interval_s=2.5)
  assert [l.split()[4] for l in log.getvalue().splitlines()] == ["3/10", "6/10", "9/10", "10/10"]
  monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a line at every update
  log = io.StringIO()
  _run(log, clock, steps=4, dt=1.0)
  assert len(log.getvalue().splitlines()) == 4


def test_slow_steps_rate_resumed_run_and_early_stop(clock):
  log = io.StringIO()
  bar = progress.Progress(total=10, initial=4, desc="pretrain seed 1", file=log, interval_s=5)
  bar.set_postfix_str("writing")
  for _ in range(3):
    clock.now += 4.0  # 0.25 steps per second: shown as seconds per step
    bar.update(1)
  bar.close()  # stopped at 7 of 10 (an exception, say)
  bar.close()  # closing twice writes nothing more
  lines = log.getvalue().splitlines()
  assert lines == [
    "[pretrain seed 1] step 6/10 (60%)  4.00 s/it  writing  eta 16s",
    "[pretrain seed 1] step 7/10 (70%)  4.00 s/it  writing  stopped after 12s",
  ]


def test_disabled_or_nothing_done_writes_nothing(clock):
  log = io.StringIO()
  _run(log, clock, disable=True)
  _run(_Terminal(), clock, disable=True)
  progress.Progress(total=0, desc="scratch seed 0", file=log).close()  # nothing to train
  progress.Progress(total=5, initial=5, file=log).close()  # a finished run, resumed
  assert log.getvalue() == ""


def test_terminal_gets_the_tqdm_bar(clock):
  pytest.importorskip("tqdm")
  term = _Terminal()
  bar = _run(term, clock, steps=5, mininterval=0)
  assert bar.is_bar
  text = term.getvalue()
  assert "\r" in text  # redrawn in place
  assert "reptile seed 0" in text and "5/5" in text and "d_loss=0.504" in text


def test_format_line_durations():
  line = progress.format_line("lopt (tbptt)", 5, 200, 0.5, "meta_loss 1.700", eta_s=3725)
  assert line == "[lopt (tbptt)] step 5/200 (2%)  2.00 s/it  meta_loss 1.700  eta 1h02m"
  assert progress.format_line("x", 3, None, float("nan"), elapsed_s=65) == (
    "[x] step 3  ? it/s  done in 1m05s"
  )
