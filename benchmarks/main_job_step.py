"""Speed of one meta-step (or pre-training step) of an Omniglot experiment config; one JSON line.

  python benchmarks/main_job_step.py --config experiments/configs/omniglot_short.py --method reptile
  python benchmarks/main_job_step.py --method pretrain          # the GAN pre-training step
  python benchmarks/main_job_step.py --method fomaml --config experiments/configs/omniglot_full.py
  python benchmarks/main_job_step.py --vectorize vmap           # override the resolved default
  python benchmarks/main_job_step.py --matmul-dtype bfloat16    # bf16 products (AVX512-BF16 / AMX)

The step is exactly the experiment's (``experiments/train_lib.py``: model, loss,
inner rule, T / K / Q, outer optimiser) on random images of the config's shape.
Fields: experiment_config, method, vectorize (asked) and vectorize_resolved, T, K, Q,
inner_steps, compile_s, median/min/max_ms, steps_per_s, peak_rss_mb, device.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import metagan_jax as mg  # noqa: E402
from benchmarks import common  # noqa: E402
from experiments import train_lib  # noqa: E402
from metagan_jax import gan  # noqa: E402

REQUIRED = (
  "benchmark",
  "experiment_config",
  "method",
  "vectorize_resolved",
  "device",
  "compile_s",
  "median_ms",
  "steps_per_s",
)


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("exp_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def apply_overrides(config, pairs):
  """``--set a.b=value`` pairs onto the config, each value cast to its field's type."""
  for pair in pairs or []:
    key, sep, value = pair.partition("=")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    if not sep or leaf not in node:
      raise ValueError(
        f"--set {pair!r}: expected FIELD=VALUE with FIELD a field of the config "
        f"(e.g. loss=ns, inner_opt=sgd, train.tasks=8)."
      )
    old = node[leaf]
    node[leaf] = value.lower() in ("1", "true") if isinstance(old, bool) else type(old)(value)
  return config


def run(args) -> dict:
  config = apply_overrides(load_config(args.config), args.set)
  if args.matmul_dtype:
    config.model_kw.matmul_dtype = args.matmul_dtype
  tc = config.train
  shape = train_lib.get_model(config).data_shape
  rng = np.random.default_rng(0)
  key = jax.random.key(1)
  if args.method == "pretrain":
    pcfg = train_lib.pretrain_config(config)
    state = gan.init(jax.random.key(0), pcfg)
    batch = jnp.asarray(rng.uniform(-1, 1, (config.pretrain.batch, *shape)), jnp.float32)
    fn = jax.jit(functools.partial(gan.train_step, config=pcfg))
    args_ = (state, batch, key)
    asked = resolved = "n/a"
    t, k, q, inner = 1, int(config.pretrain.batch), 0, 1
  else:
    mc = train_lib.meta_config(config, args.method)
    if args.vectorize:
      mc = dataclasses.replace(mc, vectorize=args.vectorize)
    mc = dataclasses.replace(
      mc,
      meta_backward=args.meta_backward,
      map_batch=args.map_batch,
      adapt=dataclasses.replace(mc.adapt, unroll=args.unroll, remat=args.remat),
    )
    asked, resolved = mc.vectorize, mc.resolved_vectorize()
    mesh = mc.task_mesh()
    state = mg.parallel.replicate(mg.init(jax.random.key(0), mc), mesh)
    imgs = rng.uniform(-1, 1, (tc.tasks, tc.k + tc.q, *shape)).astype(np.float32)
    tasks = mg.parallel.shard_tasks(mg.Tasks(imgs[:, : tc.k], imgs[:, tc.k :]), mesh)
    fn = jax.jit(functools.partial(mg.meta_step, config=mc))
    args_ = (state, tasks, key)
    t, k, q, inner = int(tc.tasks), int(tc.k), int(tc.q), int(config.inner_steps)
  t0 = time.perf_counter()
  compiled = fn.lower(*args_).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": args_[0]}

  def one():
    holder["state"], metrics = compiled(holder["state"], *args_[1:])
    jax.block_until_ready(metrics)

  stats = common.time_steps(one, args.steps, warmup=args.warmup)
  dev = jax.devices()[0]
  return {
    "benchmark": "main_job_step",
    "experiment_config": os.path.basename(args.config),
    "method": args.method,
    "overrides": args.set or [],
    "model": config.model,
    "matmul_dtype": args.matmul_dtype,
    "loss": config.loss,
    "inner_opt": config.inner_opt,
    "vectorize": asked,
    "vectorize_resolved": resolved,
    "T": t,
    "K": k,
    "Q": q,
    "inner_steps": inner,
    "second_order_steps": config.get("second_order_steps", "all"),
    "meta_backward": args.meta_backward,
    "map_batch": args.map_batch,
    "unroll": args.unroll,
    "remat": args.remat,
    "d_steps": int(config.pretrain.d_steps if args.method == "pretrain" else config.d_steps),
    "device": f"cpu: {common.cpu_name()}" if dev.platform == "cpu" else str(dev.device_kind),
    "num_devices": jax.device_count(),
    "jax": jax.__version__,
    "compile_s": compile_s,
    **stats,
    "steps_per_s": 1e3 / stats["median_ms"],
    "peak_rss_mb": common.peak_rss_mb(),
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", default=os.path.join(ROOT, "experiments/configs/omniglot_short.py"))
  p.add_argument("--method", default="reptile", choices=list(mg.ALGORITHMS) + ["pretrain"])
  p.add_argument("--vectorize", default=None, choices=["auto", "map", "vmap"])
  p.add_argument("--map-batch", type=int, default=1, help="tasks per lax.map iteration (map)")
  p.add_argument("--meta-backward", default="batched", choices=["batched", "sequential"])
  p.add_argument("--unroll", action="store_true", help="unroll the inner loop instead of scan")
  p.add_argument("--remat", action="store_true", help="jax.checkpoint every inner step")
  p.add_argument(
    "--set",
    action="append",
    metavar="FIELD=VALUE",
    help="override a config field, e.g. --set loss=ns --set second_order_steps=2",
  )
  p.add_argument(
    "--matmul-dtype",
    default=None,
    choices=["bfloat16"],
    help="the model's products in bf16 (models.fsgan28(matmul_dtype=...)); for "
    "CPUs with AVX512-BF16 or AMX",
  )
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  common.emit(run(p.parse_args(argv)), required=REQUIRED)


if __name__ == "__main__":
  main()
