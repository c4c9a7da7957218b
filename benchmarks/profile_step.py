"""Where the time of one standard meta-step goes: time per XLA op kind, and XLA's FLOP count.

  python benchmarks/profile_step.py [--algorithm maml] [--steps 3]

Traces ``--steps`` jitted meta-steps of the standard workload with
``jax.profiler`` (per-op trace events from XLA:CPU), then sums the thread time
of each op kind (``ynn_fusion`` = YNNPACK matmuls, ``copy_*`` = layout copies,
...). Thread times add up over both cores, so their total exceeds wall time.
Also prints XLA's ``cost_analysis`` FLOPs for the step. XLA counts a ``while``
body once, so they come from a compile with the inner loop unrolled, times T
(one ``lax.map`` iteration is one task).
"""

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

import metagan_jax as mg  # noqa: E402
from benchmarks import common, maml_speed  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--algorithm", default="maml", choices=mg.ALGORITHMS)
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args()
  bench_args = maml_speed.parser().parse_args(["--algorithm", args.algorithm])
  bench_args.vectorize, bench_args.map_batch, bench_args.meta_backward = "map", 1, "batched"
  w = common.WORKLOADS["omniglot28-dcgan"]
  config, state, tasks = maml_speed.build(w, bench_args)
  step = jax.jit(functools.partial(mg.meta_step, config=config))
  compiled = step.lower(state, tasks, jax.random.key(0)).compile()
  for i in range(2):
    jax.block_until_ready(compiled(state, tasks, jax.random.key(i)))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for i in range(args.steps):
        jax.block_until_ready(compiled(state, tasks, jax.random.key(i)))
    with gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]) as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  by_kind = collections.Counter()
  for e in events:
    name = e["name"]
    if name.startswith("$") or "Thunk" in name or "Slinky" in name or "trace" in name:
      continue
    by_kind[name.rstrip("0123456789.").rstrip("_")] += e["dur"] / 1e3 / args.steps
  bench_args.loop = "unroll"
  config_u, _, _ = maml_speed.build(w, bench_args)
  cost = (
    jax.jit(functools.partial(mg.meta_step, config=config_u))
    .lower(state, tasks, jax.random.key(0))
    .compile()
    .cost_analysis()
  )
  cost = cost[0] if isinstance(cost, list) else cost
  print(
    json.dumps(
      {
        "algorithm": args.algorithm,
        "thread_ms_per_step_total": round(sum(by_kind.values()), 1),
        "thread_ms_per_step_by_kind": {k: round(v, 1) for k, v in by_kind.most_common(12)},
        "xla_gflop_per_step": round(cost.get("flops", 0.0) * w.T / 1e9, 2),
        "useful_gflop_per_step": round(common.useful_gflop(w, args.algorithm), 2),
      }
    )
  )


if __name__ == "__main__":
  main()
