"""Griffin-Lim on 2 cores: the library's jitted JAX inversion against librosa's, same settings.

  python benchmarks/griffin_lim.py            # FSDD clips (../shared/data/fsdd), 64 iterations
  python benchmarks/griffin_lim.py --iters 32 --batches 1,4,64

Both invert the same linear STFT magnitudes (FSDD clips' log-mel, mapped back by the
mel pseudo-inverse, as the voices protocol does for every generated clip) with fast
Griffin-Lim (momentum 0.99, zero initial phase, the run's window and hop). librosa's
works one clip at a time (its API), the JAX one on a batch in one jitted call. For each
batch size: the median wall time of ``--repeats`` calls after one warm-up call (JAX's
compilation is not counted; it is printed once), the ratio, and the spectral
convergence ``|| |STFT(x)| - S || / || S ||`` of each, so the faster is not the worse.
Prints one JSON line per row and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402


def spectral_convergence(waves_NxL, mags_NxFxT, spec) -> float:
  from metagan_jax import audio  # pylint: disable=g-import-not-at-top

  got = np.abs(np.asarray(audio.stft(np.asarray(waves_NxL, np.float32), spec)))
  return float(
    np.mean(np.linalg.norm(got - mags_NxFxT, axis=(1, 2)) / np.linalg.norm(mags_NxFxT, axis=(1, 2)))
  )


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--iters", type=int, default=64)
  p.add_argument("--batches", default="1,4,64")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import librosa  # pylint: disable=g-import-not-at-top

  import metagan_jax as mg  # pylint: disable=g-import-not-at-top

  spec = mg.audio.SpecConfig()
  clips = np.concatenate(mg.data.load_fsdd(spec=spec, verbose=False).images[:2])
  batches = [int(b) for b in args.batches.split(",")]
  logmel = mg.audio.log_mel_batched(clips[: max(batches)], spec)
  mags = np.asarray(mg.audio.mel_to_linear(logmel, spec))
  rows = []

  def jax_gl(m):
    return np.asarray(mg.audio.griffin_lim(m, spec, args.iters))

  def librosa_gl(m):
    return np.stack(
      [
        librosa.griffinlim(
          x,
          n_iter=args.iters,
          hop_length=spec.hop,
          win_length=spec.n_fft,
          n_fft=spec.n_fft,
          window="hann",
          center=True,
          momentum=0.99,
          init=None,
          length=spec.num_samples,
        )
        for x in m
      ]
    )

  for b in batches:
    m = mags[:b]
    t0 = time.perf_counter()
    jax.block_until_ready(jax_gl(m))
    first = time.perf_counter() - t0
    row = {"benchmark": "griffin_lim", "batch": b, "iters": args.iters, "device": common.cpu_name()}
    for name, fn in (("jax", jax_gl), ("librosa", librosa_gl)):
      out = fn(m)  # warm-up (librosa: numba's and FFT plans' first calls)
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fn(m)
        times.append(time.perf_counter() - t0)
      row[f"{name}_s"] = round(statistics.median(times), 4)
      row[f"{name}_convergence"] = round(spectral_convergence(out, m, spec), 4)
    row["jax_first_call_s"] = round(first, 2)
    row["librosa_over_jax"] = round(row["librosa_s"] / row["jax_s"], 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(
    "\n| clips | JAX s | librosa s | librosa / JAX | convergence JAX / librosa |\n"
    "|---|---|---|---|---|"
  )
  for r in rows:
    print(
      f"| {r['batch']} | {r['jax_s']:.3f} | {r['librosa_s']:.3f} | {r['librosa_over_jax']:.1f}x | "
      f"{r['jax_convergence']:.3f} / {r['librosa_convergence']:.3f} |"
    )


if __name__ == "__main__":
  main()
