"""Speed and memory of one meta-step on a named workload; prints one JSON line.

  python benchmarks/maml_speed.py --workload omniglot28-dcgan --algorithm maml
  python benchmarks/maml_speed.py --algorithm reptile --inner-steps 20 --remat
  python benchmarks/maml_speed.py --vectorize vmap --conv-impl xla   # the plain formulation
  python benchmarks/maml_speed.py --matmul-dtype bfloat16   # bf16 products (AVX512-BF16 / AMX)
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/maml_speed.py  # 4 CPU devices

Fields (see ``common.py`` for the useful-FLOP formula): backend, device,
compile_s (lower + compile of the jitted meta-step), median/min/max_ms over
``--steps`` meta-steps after warm-up, meta_steps_per_s, tasks_per_s,
peak_rss_mb (process high-water mark: run one configuration per process),
xla_temp_mb / xla_argument_mb / xla_output_mb (XLA's memory analysis of the
compiled step), useful_gflop, useful_gflops_per_s, and matmul_gflops_per_s, a
dense float32 2048x2048 matmul measured in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import metagan_jax as mg  # noqa: E402
from benchmarks import common  # noqa: E402


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
  """Best-of-``reps`` float32 ``n x n @ n x n`` rate in GFLOP/s (this process, all threads)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


def build(w: common.Workload, args) -> tuple:
  """The meta-config, initial state and a fixed batch of tasks for workload ``w``."""
  dtype = jnp.dtype(args.dtype)
  model = mg.models.dcgan28(
    z_dim=w.z_dim, channels=w.channels, conv_impl=args.conv_impl, matmul_dtype=args.matmul_dtype
  )
  adapt = mg.AdaptConfig(
    model,
    inner_steps=w.inner_steps,
    inner_lr=w.inner_lr,
    loss="ns",
    unroll=args.loop == "unroll",
    remat=args.remat,
  )
  mesh = mg.parallel.task_mesh(jax.devices()[: args.devices]) if args.devices else None
  config = mg.MetaConfig(
    adapt,
    algorithm=args.algorithm,
    outer_lr=w.outer_lr,
    vectorize=args.vectorize,
    map_batch=args.map_batch,
    meta_backward=args.meta_backward,
    mesh=mesh,
  )
  state = mg.init(jax.random.key(0), config)
  state = jax.tree.map(
    lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
  )
  rng = np.random.default_rng(0)
  shape = (w.T, w.K + w.Q, w.image_hw, w.image_hw, w.channels)
  imgs = jnp.asarray(rng.uniform(-1, 1, shape), dtype)
  tasks = mg.Tasks(support=imgs[:, : w.K], query=imgs[:, w.K :])
  return config, state, tasks


def run(args) -> dict:
  w = dataclasses.replace(
    common.WORKLOADS[args.workload],
    **{
      k: v
      for k, v in (("T", args.T), ("K", args.K), ("Q", args.Q), ("inner_steps", args.inner_steps))
      if v
    },
  )
  config, state, tasks = build(w, args)
  # Tasks split over every device (one device: a mesh of one), params replicated.
  # With several processes each feeds its own T / processes tasks.
  mesh = config.task_mesh()
  n_local = w.T // jax.process_count()
  tasks = jax.tree.map(lambda x: x[jax.process_index() * n_local :][:n_local], tasks)
  state, tasks = mg.parallel.replicate(state, mesh), mg.parallel.shard_tasks(tasks, mesh)
  step_fn = jax.jit(functools.partial(mg.meta_step, config=config), donate_argnums=0)
  key = jax.random.key(1)

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, tasks, key).compile()
  compile_s = time.perf_counter() - t0
  mem = {}
  try:
    ma = compiled.memory_analysis()
    mem = {
      "xla_temp_mb": ma.temp_size_in_bytes / 2**20,
      "xla_argument_mb": ma.argument_size_in_bytes / 2**20,
      "xla_output_mb": ma.output_size_in_bytes / 2**20,
    }
  except Exception:  # noqa: BLE001 - not every backend reports it
    pass

  holder = {"state": state}
  keys = iter(jax.random.split(key, args.steps + args.warmup))

  def one():
    holder["state"], metrics = compiled(holder["state"], tasks, next(keys))
    jax.block_until_ready(metrics)

  stats = common.time_steps(one, args.steps, warmup=args.warmup)
  record = {
    "backend": "jax",
    "device": f"{jax.devices()[0].platform}: {common.cpu_name()}"
    if jax.devices()[0].platform == "cpu"
    else str(jax.devices()[0].device_kind),
    "workload": w.name,
    "algorithm": args.algorithm,
    "T": w.T,
    "K": w.K,
    "Q": w.Q,
    "inner_steps": w.inner_steps,
    "dtype": args.dtype,
    "matmul_dtype": args.matmul_dtype,
    "loop": args.loop,
    "remat": args.remat,
    "vectorize": args.vectorize,
    "vectorize_resolved": config.resolved_vectorize(),
    "map_batch": args.map_batch,
    "conv_impl": args.conv_impl,
    "conv_impl_resolved": mg.backend.resolve_conv_impl(args.conv_impl),
    "meta_backward": args.meta_backward,
    "jax": jax.__version__,
    "num_devices": mesh.size,
    "devices_available": jax.device_count(),
    "num_processes": jax.process_count(),
    "compile_s": compile_s,
    **stats,
    **mem,
    "matmul_gflops_per_s": matmul_gflops() if not args.no_matmul else None,
  }
  return common.finish(record, w, args.algorithm)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workload", default="omniglot28-dcgan", choices=sorted(common.WORKLOADS))
  p.add_argument("--algorithm", default="maml", choices=mg.ALGORITHMS)
  p.add_argument("--T", type=int, default=None, help="tasks per meta-step")
  p.add_argument("--K", type=int, default=None, help="support images per task")
  p.add_argument("--Q", type=int, default=None, help="query images per task")
  p.add_argument("--inner-steps", type=int, default=None)
  p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
  p.add_argument(
    "--matmul-dtype",
    default=None,
    choices=["bfloat16"],
    help="products in bf16 with float32 accumulation, in every derivative "
    "(parameters and everything else stay --dtype); for CPUs with "
    "AVX512-BF16 or AMX",
  )
  p.add_argument("--loop", default="scan", choices=["scan", "unroll"])
  p.add_argument("--remat", action="store_true", help="jax.checkpoint each inner step")
  p.add_argument(
    "--vectorize",
    default=None,
    choices=["auto", "map", "vmap"],
    help="how tasks are vectorised (default: the library's default)",
  )
  p.add_argument("--map-batch", type=int, default=None)
  p.add_argument("--meta-backward", default=None, choices=["batched", "sequential"])
  p.add_argument(
    "--conv-impl",
    default="auto",
    choices=["auto", "matmul", "xla"],
    help="auto: matmul on CPU, xla on accelerators (metagan_jax/backend.py)",
  )
  p.add_argument(
    "--devices",
    type=int,
    default=None,
    help="split the tasks over the first N devices (default: all)",
  )
  p.add_argument("--steps", type=int, default=20, help="timed meta-steps (>= 20 for reports)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--no-matmul", action="store_true", help="skip the matmul reference")
  return p


def main(argv=None) -> None:
  args = parser().parse_args(argv)
  defaults = mg.MetaConfig(mg.AdaptConfig(mg.models.mlp()))
  args.vectorize = args.vectorize or defaults.vectorize
  args.map_batch = args.map_batch or defaults.map_batch
  args.meta_backward = args.meta_backward or defaults.meta_backward
  if args.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  mg.parallel.initialize_distributed()  # several processes: METAGAN_* environment variables
  record = run(args)
  if jax.process_index() == 0:
    common.emit(record)


if __name__ == "__main__":
  main()
