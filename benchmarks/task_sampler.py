"""Task-sampler throughput on the offline Omniglot (the sampler alone, no model).

Prints one JSON line. Example:

  python benchmarks/task_sampler.py --T 8 --K 5 --Q 5 --steps 3000
  python benchmarks/task_sampler.py --jitter

``tasks_per_s`` is the plain iterator (numpy on the host); ``prefetch_*`` is
the same stream through the background thread with ``jax.device_put`` (what a
training loop consumes).
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

from metagan_jax import data  # noqa: E402


def _rate(it, steps: int) -> float:
  """Batches per second over ``steps`` batches (after 20 warm-up batches)."""
  for _ in range(20):
    next(it)
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(it))
  return steps / (time.perf_counter() - t0)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--data-dir",
    default=None,
    help="offline omniglot28 folder (default: $METAGAN_OMNIGLOT28_DIR, ../shared)",
  )
  p.add_argument("--split", default="train")
  p.add_argument("--T", type=int, default=8)
  p.add_argument("--K", type=int, default=5)
  p.add_argument("--Q", type=int, default=5)
  p.add_argument("--image-size", type=int, default=28)
  p.add_argument("--jitter", action="store_true", help="small random affine jitter on")
  p.add_argument("--steps", type=int, default=2000, help="timed batches per measurement")
  p.add_argument("--prefetch-size", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()

  t0 = time.perf_counter()
  sampler = data.make_sampler(
    "omniglot28",
    args.split,
    data_dir=args.data_dir,
    T=args.T,
    K=args.K,
    Q=args.Q,
    seed=args.seed,
    jitter=args.jitter,
    image_size=args.image_size,
    verbose=False,
  )
  load_s = time.perf_counter() - t0

  batches_per_s = _rate(sampler, args.steps)
  with sampler.prefetch(size=args.prefetch_size) as it:
    prefetch_batches_per_s = _rate(it, args.steps)

  print(
    json.dumps(
      {
        "benchmark": "task_sampler",
        "tasks_per_s": round(batches_per_s * args.T, 1),
        "batches_per_s": round(batches_per_s, 1),
        "prefetch_tasks_per_s": round(prefetch_batches_per_s * args.T, 1),
        "prefetch_batches_per_s": round(prefetch_batches_per_s, 1),
        "T": args.T,
        "K": args.K,
        "Q": args.Q,
        "image_shape": list(sampler.image_shape),
        "jitter": args.jitter,
        "split": args.split,
        "num_classes": sampler.num_classes,
        "steps": args.steps,
        "load_s": round(load_s, 2),
        "device": str(jax.devices()[0]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
      }
    )
  )


if __name__ == "__main__":
  main()
