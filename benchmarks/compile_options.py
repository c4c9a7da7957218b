"""What XLA's CPU backend optimisation level costs and buys for ``generate``'s programs.

  python benchmarks/compile_options.py --run runs/voices_short/fold0
  python benchmarks/compile_options.py --config experiments/configs/omniglot_short.py

A cold ``generate`` mostly waits for XLA to compile the adaptation program (one
scan of the inner loop: D and G steps, a gradient penalty's double backward). Its
LLVM passes are set by ``xla_backend_optimization_level`` (3 by default on CPU).
For each level, in a fresh process with no compilation cache, this compiles the
run's adapt-and-sample program at the run's headline T (and, for a run on
recordings, Griffin-Lim's decoding of 68 clips), then times 5 runs of it.
``--config`` instead of ``--run``: the config's model at its initialisation and
its own rule (what is compiled does not depend on the weights; a run's rule may
differ from its config's). It prints one JSON line per level and a markdown
table: compile seconds, the median run time, and the largest difference of the
samples from the first level's (0.0: the same numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position


def parse_options(spec: str) -> dict | None:
  """``"default"`` -> None; ``"2"`` -> level 2; ``"2+xla_cpu_x=true"`` -> level 2 plus that option."""
  if spec == "default":
    return None
  opts = {}
  for part in spec.split("+"):
    if part.isdigit():
      opts["xla_backend_optimization_level"] = int(part)
      continue
    name, _, value = part.partition("=")
    if not name.startswith("xla_") or not value:
      raise SystemExit(f"option {part!r}: write NAME=VALUE with an XLA option name (xla_...).")
    opts[name] = {"true": True, "false": False}.get(
      value.lower(), int(value) if value.isdigit() else value
    )
  return opts


def one_level(run_dir: str, opts: dict | None, out: str) -> dict:
  """In this process: compile and time the run's programs with XLA options ``opts`` (None: default)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import metagan_jax as mg  # pylint: disable=g-import-not-at-top
  from metagan_jax import runs  # pylint: disable=g-import-not-at-top

  if run_dir.endswith(".py"):  # a config: its model at initialisation, its own rule
    from benchmarks.main_job_step import load_config  # pylint: disable=g-import-not-at-top
    from metagan_jax import recipes  # pylint: disable=g-import-not-at-top

    cfg = load_config(run_dir)
    model = recipes.model(cfg)
    ac = recipes.adapt_config(cfg, int(cfg.eval.headline))
    params, k, psi, spg = model.init(jax.random.key(0)), int(cfg.eval.k), 1.0, None
  else:
    run = mg.load_run(run_dir)
    model, ac, params, k, psi = run.model, run.adapt_config_for(None), run.meta_params, 4, run.psi
    spg = run.preprocessing.spectrogram
  support = np.asarray(
    jax.random.uniform(jax.random.key(0), (k, *model.data_shape), minval=-1, maxval=1)
  )
  leaves, treedef = jax.tree.flatten(params)

  def flat(*arrays):
    params = jax.tree.unflatten(treedef, arrays[:-2])
    return runs._one_class(params, *arrays[-2:], ac, 64, psi)  # pylint: disable=protected-access

  args = [*leaves, support, np.uint32(0)]
  rows = {}

  def measure(name, fn, fargs):
    t0 = time.perf_counter()
    lowered = jax.jit(fn, compiler_options=opts).lower(*fargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    times, y = [], None
    for _ in range(5):
      s = time.perf_counter()
      y = np.asarray(compiled(*fargs))
      times.append(time.perf_counter() - s)
    rows[name] = {
      "lower_s": round(t1 - t0, 3),
      "compile_s": round(t2 - t1, 3),
      "run_s": round(statistics.median(times), 4),
    }
    return y

  samples = measure("adapt_and_sample", flat, args)
  outs = {"samples": samples}
  if spg is not None:
    from metagan_jax import audio  # pylint: disable=g-import-not-at-top

    x = np.concatenate([samples, support])
    iters = int(run.config.get("oracles", {}).get("gl_iters", 64))

    def decode(x, mean, std):
      return audio._decode(x, mean, std, spg.spec, iters)  # pylint: disable=protected-access

    outs["waves"] = measure(
      "griffin_lim", decode, [x, np.asarray(spg.stats.mean), np.asarray(spg.stats.std)]
    )
  np.savez(out, **outs)
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--run", default=os.path.join(ROOT, "runs", "voices_short", "fold0"))
  p.add_argument("--config", default=None, help="a config file instead of --run")
  p.add_argument(
    "--levels",
    default="default,2,1",
    help="comma-separated sets: 'default', a level (2), or a level and options (2+NAME=VALUE)",
  )
  p.add_argument("--repeats", type=int, default=2, help="fresh processes per level")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.config:
    args.run = os.path.abspath(args.config)
  if args._child is not None:  # pylint: disable=protected-access
    print(json.dumps(one_level(args.run, parse_options(args._child), args._out)))
    return
  import numpy as np  # pylint: disable=g-import-not-at-top

  env = {**os.environ, "METAGAN_COMPILATION_CACHE": "0", "JAX_ENABLE_COMPILATION_CACHE": "false"}
  levels = [s.strip() for s in args.levels.split(",") if s.strip()]
  results, ref = [], None
  tmp = os.path.join(ROOT, "runs", "compile_options")
  os.makedirs(tmp, exist_ok=True)
  for rep in range(args.repeats):  # levels interleaved, so a slow minute hits them alike
    for lv in levels:
      out = os.path.join(tmp, f"{lv}.npz")
      cmd = [sys.executable, __file__, "--run", args.run, "--_child", lv, "--_out", out]
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
      if proc.returncode:  # an option this XLA does not know: say so and go on
        print(f"{lv}: failed: {proc.stderr.strip().splitlines()[-1]}", flush=True)
        continue
      rows = json.loads(proc.stdout.strip().splitlines()[-1])
      got = dict(np.load(out))
      if lv == levels[0] and ref is None:
        ref = got
      diff = {k: float(np.abs(got[k] - ref[k]).max()) for k in got}
      r = {
        "benchmark": "compile_options",
        "run": os.path.relpath(os.path.abspath(args.run), ROOT),
        "level": lv,
        "repeat": rep,
        "device": common.cpu_name(),
        **{f"{k}_{m}": v for k, row in rows.items() for m, v in row.items()},
        **{f"max_diff_{k}": v for k, v in diff.items()},
      }
      results.append(r)
      print(json.dumps(r), flush=True)
  print("\n| level | adapt compile s | adapt run s | GL compile s | GL run s | max diff |")
  print("|---|---|---|---|---|---|")
  for lv in levels:
    rs = [r for r in results if r["level"] == lv]
    if not rs:
      continue

    def med(key, rs=rs):
      vals = [r[key] for r in rs if key in r]
      return f"{statistics.median(vals):.2f}" if vals else "-"

    diff = max(v for r in rs for k, v in r.items() if k.startswith("max_diff"))
    print(
      f"| {lv} | {med('adapt_and_sample_compile_s')} | {med('adapt_and_sample_run_s')} | "
      f"{med('griffin_lim_compile_s')} | {med('griffin_lim_run_s')} | {diff:.2g} |"
    )


if __name__ == "__main__":
  main()
