"""Wall time of ``metagan generate`` as a user waits for it: cold, warm, no cache, several classes.

  python benchmarks/generate_time.py --run runs/omniglot_short
  python benchmarks/generate_time.py --run runs/omniglot_short --images my_class --warm 5
  python benchmarks/generate_time.py --run runs/cond --method transfer --steps 0  # T = 0
  python benchmarks/generate_time.py --run runs/voices_short/fold0 --num 16  # recordings

Each call is the README's command (``python -m metagan_jax generate RUN --images
DIR --num 64``) in its own process, timed from outside, so the figure includes
Python's start, the imports, loading the run, compiling or loading the compiled
programs, adapting, sampling and writing. Prints one JSON line per row and a
markdown table:

- ``cold``: an empty compilation-cache folder, as on a fresh machine (the
  operating system's file cache is warm: the libraries were read before);
- ``warm``: later calls with the cache the cold call filled (median of ``--warm``);
- ``no cache``: ``--no-compilation-cache``, what every call cost before the cache;
- ``5 classes cold`` / ``warm``: one call on a folder of 5 class sub-folders.

Without ``--images``, the first 4 images of 5 evaluation classes of the
omniglot28 data are written as PNGs (dark strokes on white, as a user has them); for a
run on recordings (a fold of ``experiments/voices.py``), 4 FSDD recordings (25-28) of 5
digits of the fold's test speaker are copied as WAV files.
With ``--against TREE`` (another checkout, e.g. ``git worktree add /tmp/base HEAD``), it
instead alternates the two trees' code for ``--rounds`` rounds (which goes first alternates
too), each round one cold call and 3 warm calls per tree, and prints the medians: a
before-and-after comparison on one machine in one sitting.
Fields of the report the command writes (``load_run_s``, ``adapt_and_sample_s``,
the cache's hits and misses) come with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position


def write_classes(folder: str, n_classes: int = 5, k: int = 4) -> list[str]:
  """``k`` images of each of ``n_classes`` evaluation classes as PNGs, one sub-folder each."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from metagan_jax import cli, data  # pylint: disable=g-import-not-at-top

  test = data.load_split("omniglot", "test", verbose=False)
  names = []
  for c in range(n_classes):
    name = f"class{c:02d}"
    imgs = 1.0 - (np.asarray(test.images[c][:k, :, :, 0]) + 1) / 2  # dark strokes on white
    os.makedirs(os.path.join(folder, name))
    for i, x in enumerate(imgs):
      cli.save_png(os.path.join(folder, name, f"{i}.png"), x)
    names.append(name)
  return names


def write_recordings(folder: str, run: str, n_classes: int = 5, k: int = 4) -> list[str]:
  """``k`` FSDD recordings of each of ``n_classes`` digits of an audio run's test speaker.

  The run is a fold folder of ``experiments/voices.py``; its test speaker's recordings 25-28
  (never heard in training; the oracles never trained on them) are copied as a user has them.
  """
  import shutil  # pylint: disable=g-import-not-at-top

  from metagan_jax import data  # pylint: disable=g-import-not-at-top

  with open(os.path.join(run, "config.json")) as f:
    cfg = json.load(f)
  fsdd = data.find_fsdd(cfg.get("data_dir") or None)
  speakers = sorted(
    {p.split("_")[1] for p in os.listdir(fsdd / "recordings") if p.endswith(".wav")}
  )
  speaker = speakers[int(cfg["fold"])]
  names = []
  for digit in range(n_classes):
    name = f"{speaker}_{digit}"
    os.makedirs(os.path.join(folder, name))
    for i in range(25, 25 + k):
      shutil.copy(fsdd / "recordings" / f"{digit}_{speaker}_{i}.wav", os.path.join(folder, name))
    names.append(name)
  return names


def call(
  run: str, images: str, out: str, cache: str, num: int, *extra: str, root: str = ROOT
) -> dict:
  """One ``generate`` in a fresh process (the code of the tree ``root``): wall seconds and report."""
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
  env.pop("METAGAN_COMPILATION_CACHE", None)
  cmd = [
    sys.executable,
    "-m",
    "metagan_jax",
    "generate",
    run,
    "--images",
    images,
    "--num",
    str(num),
    "--out",
    out,
    "--quiet",
    "--overwrite",
    *extra,
  ]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
  with open(os.path.join(out, "report.json")) as f:
    rep = json.load(f)
  return {
    "wall_s": round(wall, 2),
    "total_s": rep["total_s"],
    "load_run_s": rep["load_run_s"],
    "adapt_and_sample_s": rep["adapt_and_sample_s"],
    "cache_hits": rep["compilation_cache"]["hits"],
    "cache_misses": rep["compilation_cache"]["misses"],
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--run", default=os.path.join(ROOT, "runs", "omniglot_short"))
  p.add_argument("--images", default=None, help="one class's folder (default: 4 omniglot images)")
  p.add_argument("--num", type=int, default=64)
  p.add_argument("--warm", type=int, default=3, help="warm calls (median reported)")
  p.add_argument("--steps", type=int, default=None, help="adaptation steps (default: the run's)")
  p.add_argument("--method", default=None, help="the run's method to load (default: its best)")
  p.add_argument("--against", default=None, help="another tree to compare with, interleaved")
  p.add_argument("--rounds", type=int, default=6, help="rounds of the --against comparison")
  args = p.parse_args(argv)
  opts = [*(["--steps", str(args.steps)] if args.steps is not None else [])]
  opts += ["--method", args.method] if args.method else []
  tmp = tempfile.mkdtemp(prefix="generate_time_")
  if args.images is None:
    classes = os.path.join(tmp, "classes")
    with open(os.path.join(args.run, "config.json")) as f:
      audio = bool(json.load(f).get("spectrogram"))  # a fold of experiments/voices.py
    names = write_recordings(classes, args.run) if audio else write_classes(classes)
    one = os.path.join(classes, names[0])
  else:
    classes, one = None, os.path.abspath(args.images)
  cache, out = os.path.join(tmp, "cache"), os.path.join(tmp, "out")
  if args.against:
    compare(args, one, tmp, opts)
    return
  rows = []

  def row(name, r):
    r = {"benchmark": "generate_time", "row": name, "device": common.cpu_name(), **r}
    rows.append(r)
    print(json.dumps(r), flush=True)

  row("cold (empty cache)", call(args.run, one, out, cache, args.num, *opts))
  warm = [call(args.run, one, out, cache, args.num, *opts) for _ in range(args.warm)]
  med = statistics.median(w["wall_s"] for w in warm)
  row(
    f"warm (median of {args.warm})",
    {**min(warm, key=lambda w: abs(w["wall_s"] - med)), "wall_s": med},
  )
  row(
    "no cache",
    call(
      args.run, one, out, os.path.join(tmp, "unused"), args.num, "--no-compilation-cache", *opts
    ),
  )
  if classes:
    cache5 = os.path.join(tmp, "cache5")
    row("5 classes, cold (empty cache)", call(args.run, classes, out, cache5, args.num, *opts))
    row("5 classes, warm", call(args.run, classes, out, cache5, args.num, *opts))
  print(
    "\n| call | wall s | load_run s | adapt + sample s | cache hits / misses |\n|---|---|---|---|---|"
  )
  for r in rows:
    print(
      f"| {r['row']} | {r['wall_s']:.1f} | {r['load_run_s']:.1f} | "
      f"{r['adapt_and_sample_s']:.1f} | {r['cache_hits']} / {r['cache_misses']} |"
    )


def compare(args, images: str, tmp: str, opts: list) -> None:
  """This tree's code against ``args.against``'s, interleaved: medians of cold and warm calls."""
  trees = {"this tree": ROOT, "against": os.path.abspath(args.against)}
  walls = {name: {"cold": [], "warm": []} for name in trees}
  run = os.path.abspath(args.run)
  for r in range(args.rounds):
    for i, name in list(enumerate(trees))[:: 1 if r % 2 == 0 else -1]:
      cache, out = os.path.join(tmp, f"cache_{r}_{i}"), os.path.join(tmp, "out")
      kw = {"root": trees[name]}
      walls[name]["cold"].append(call(run, images, out, cache, args.num, *opts, **kw)["wall_s"])
      for _ in range(3):
        walls[name]["warm"].append(call(run, images, out, cache, args.num, *opts, **kw)["wall_s"])
    print(json.dumps({"benchmark": "generate_time", "round": r, "walls": walls}), flush=True)
  print(f"\n| call | this tree | against ({args.against}) | ratio |\n|---|---|---|---|")
  for kind in ("cold", "warm"):
    a, b = (statistics.median(walls[n][kind]) for n in trees)
    n = len(walls["this tree"][kind])
    print(f"| {kind} (median of {n}) | {a:.1f} s | {b:.1f} s | {a / b:.2f} |")


if __name__ == "__main__":
  main()
