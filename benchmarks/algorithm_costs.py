"""Cost of every meta-learning algorithm on the main job's config: one markdown table.

  python benchmarks/algorithm_costs.py                 # the table in docs/benchmarks.md
  python benchmarks/algorithm_costs.py --profile       # plus what second order's cost is made of
  python benchmarks/algorithm_costs.py --steps 5 --config experiments/configs/omniglot_full.py

Each row is ``benchmarks/main_job_step.py`` in its own process (so peak memory is
that algorithm's alone), one after another on the same machine; ratios are to
first-order MAML's median ms in the same run. ``--profile`` adds second-order
MAML with one ingredient changed at a time: no gradient penalty (the NS loss),
SGD instead of Adam inside, two backward passes instead of one batched pass,
remat, an unrolled inner loop, vmap or
lax.map of 2 tasks over the task batch; every JSON line is also printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# (row name, main_job_step.py arguments)
ROWS = [
  ("reptile", ["--method", "reptile"]),
  ("fomaml", ["--method", "fomaml"]),
  ("maml", ["--method", "maml"]),
  ("metasgd", ["--method", "metasgd"]),
  (
    "maml, second order through the last 2 inner steps",
    ["--method", "maml", "--set", "second_order_steps=2"],
  ),
  (
    "metasgd, second order through the last 2 inner steps",
    ["--method", "metasgd", "--set", "second_order_steps=2"],
  ),
]
PROFILE = [
  ("maml, NS loss (no gradient penalty)", ["--method", "maml", "--set", "loss=ns"]),
  ("fomaml, NS loss", ["--method", "fomaml", "--set", "loss=ns"]),
  ("maml, SGD inside (no Adam)", ["--method", "maml", "--set", "inner_opt=sgd"]),
  ("maml, two backward passes", ["--method", "maml", "--meta-backward", "sequential"]),
  ("maml, remat", ["--method", "maml", "--remat"]),
  ("maml, unrolled inner loop", ["--method", "maml", "--unroll"]),
  ("maml, vmap over the tasks", ["--method", "maml", "--vectorize", "vmap"]),
  ("maml, lax.map 2 tasks at a time", ["--method", "maml", "--map-batch", "2"]),
]


def measure(config: str, extra: list[str], steps: int, warmup: int) -> dict:
  cmd = [
    sys.executable,
    os.path.join(ROOT, "benchmarks", "main_job_step.py"),
    "--config",
    config,
    "--steps",
    str(steps),
    "--warmup",
    str(warmup),
    *extra,
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  if out.returncode:
    return {"error": out.stderr[-500:]}
  return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", default=os.path.join(ROOT, "experiments/configs/omniglot_short.py"))
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--profile", action="store_true")
  args = p.parse_args(argv)
  rows = ROWS + (PROFILE if args.profile else [])
  recs = []
  for name, extra in rows:
    rec = measure(args.config, extra, args.steps, args.warmup)
    print(json.dumps({"row": name, **rec}), flush=True)
    recs.append((name, rec))
  base = dict(recs)["fomaml"].get("median_ms")
  r0 = recs[0][1]
  print(
    f"\n{os.path.basename(args.config)}: T={r0.get('T')}, K={r0.get('K')}, Q={r0.get('Q')}, "
    f"{r0.get('inner_steps')} inner steps of {r0.get('d_steps')} D + 1 G, {r0.get('loss')}, "
    f"{r0.get('inner_opt')} inside; {r0.get('device')}; median of {args.steps} steps "
    f"after {args.warmup} warm-up\n"
  )
  # The fastest step next to the median shows each row's spread (a busy core shows in one row).
  print("| algorithm | ms / meta-step | fastest ms | x fomaml | compile s | peak RSS MB |")
  print("|---|---|---|---|---|---|")
  for name, rec in recs:
    if "error" in rec:
      print(f"| {name} | error: {rec['error'].splitlines()[-1] if rec['error'] else '?'} | | | | |")
      continue
    ratio = f"{rec['median_ms'] / base:.2f}" if base else "-"
    print(
      f"| {name} | {rec['median_ms']:,.0f} | {rec['min_ms']:,.0f} | {ratio} | {rec['compile_s']:.0f} | "
      f"{rec['peak_rss_mb']:,.0f} |"
    )


if __name__ == "__main__":
  main()
