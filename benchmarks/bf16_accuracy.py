"""How far bf16 products move the standard workload's meta-gradient from float32's.

  python benchmarks/bf16_accuracy.py            # maml and fomaml, seeds 0 and 1

For each algorithm and seed: the meta-gradient of one meta-batch of the standard workload
(dcgan28, T = 8, K = Q = 5, 5 inner steps) with float32 products and with
``matmul_dtype="bfloat16"``, from the same parameters, tasks and key (so the same latents).
One JSON line each: the relative error ||g_bf16 - g_f32|| / ||g_f32||, the cosine, and the
worst parameter leaf's relative error. Accuracy only; speed is ``maml_speed.py --matmul-dtype``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import metagan_jax as mg  # noqa: E402
from benchmarks import common  # noqa: E402


def meta_gradient(matmul_dtype, algorithm: str, seed: int, w: common.Workload) -> list:
  model = mg.models.dcgan28(
    z_dim=w.z_dim, channels=w.channels, conv_impl="matmul", matmul_dtype=matmul_dtype
  )
  adapt = mg.AdaptConfig(model, inner_steps=w.inner_steps, inner_lr=w.inner_lr, loss="ns")
  config = mg.MetaConfig(adapt, algorithm=algorithm, outer_lr=w.outer_lr)
  params = model.init(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  imgs = jnp.asarray(
    rng.uniform(-1, 1, (w.T, w.K + w.Q, w.image_hw, w.image_hw, w.channels)), jnp.float32
  )
  tasks = mg.Tasks(imgs[:, : w.K], imgs[:, w.K :])
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(
    params, tasks, jax.random.key(seed + 1)
  )
  return [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(grads)]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workload", default="omniglot28-dcgan", choices=sorted(common.WORKLOADS))
  p.add_argument("--algorithms", default="maml,fomaml")
  p.add_argument("--seeds", default="0,1")
  args = p.parse_args(argv)
  w = common.WORKLOADS[args.workload]
  rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
  for algorithm in args.algorithms.split(","):
    for seed in map(int, args.seeds.split(",")):
      l32 = meta_gradient(None, algorithm, seed, w)
      l16 = meta_gradient("bfloat16", algorithm, seed, w)
      g32, g16 = np.concatenate(l32), np.concatenate(l16)
      common.emit(
        {
          "benchmark": "bf16_accuracy",
          "device": common.cpu_name(),
          "workload": w.name,
          "algorithm": algorithm,
          "seed": seed,
          "relative_error": rel(g16, g32),
          "cosine": float(g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32)),
          "worst_leaf_relative_error": max(rel(a, b) for a, b in zip(l16, l32)),
        },
        required=("benchmark", "relative_error", "cosine"),
      )


if __name__ == "__main__":
  main()
