r"""Which GAN draws Omniglot? Pre-train one recipe on the meta-training classes and score it.

Run one recipe (a named variant of RECIPES, plus overrides), or the whole ablation:
  python experiments/gan_recipe.py --variant final --steps 1500 --out runs/recipe
  python experiments/gan_recipe.py --variant all --out runs/recipe     # prints the table
Every variant writes <out>/<variant>/{samples.png, raw_samples.png, result.json,
params.msgpack}. Scores: KID x1e3, FD and diversity between 1,000 samples of the EMA
generator (the raw one for no_ema) and 1,000 images of the validation alphabets (unseen
classes), in the protocol's feature space (experiments/protocol/; the blur variant
is scored in the feature space of blurred images, so compare it by eye), and the
mean number of separate pieces of ink per sample (``metrics.stroke_components``;
real images 1.2-1.6, broken strokes many more). Any recipe field can be
overridden, e.g. the pre-training rate of the main job: --set d_lr=8e-4 g_lr=8e-4.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import flax.serialization  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

import metagan_jax as mg  # pylint: disable=g-import-not-at-top
from experiments import protocol, train_lib  # pylint: disable=g-import-not-at-top
from experiments.configs import common  # pylint: disable=g-import-not-at-top
from metagan_jax import gan  # pylint: disable=g-import-not-at-top
from metagan_jax import metrics as M  # pylint: disable=g-import-not-at-top

# The recipe of the few-shot experiments (experiments/configs/common.py: fsgan28's
# defaults, WGAN-GP, two critic steps, Adam(1e-4, 0, 0.9), EMA of G) ...
BASE = dict(
  model="fsgan28",
  model_kw={},
  loss=dict(kind="wasserstein", gp_weight=10.0),
  d_lr=1e-4,
  g_lr=1e-4,
  b1=0.0,
  b2=0.9,
  d_steps=2,
  ema=0.999,
  blur=0.0,
  batch=64,
  rotations=True,
  sample="ema",
  augment="",
)
# ... and one change at a time.
RECIPES = {
  "final": {},
  "layer_norm": dict(model_kw=dict(g_norm="layer")),
  "no_norm": dict(model_kw=dict(g_norm="none")),
  "no_mapping": dict(model_kw=dict(mapping_layers=0)),
  "wide_d": dict(model_kw=dict(d_width=64)),
  "no_ema": dict(sample="raw"),
  "one_d_step": dict(d_steps=1),
  "hinge_sn": dict(
    model_kw=dict(spectral=True),
    loss=dict(kind="hinge"),
    d_lr=2e-4,
    g_lr=2e-4,
    b1=0.5,
    b2=0.999,
    d_steps=1,
  ),
  "ns_r1": dict(
    loss=dict(kind="ns", r1_weight=1.0), d_lr=2e-4, g_lr=2e-4, b1=0.0, b2=0.99, d_steps=1
  ),
  "blur": dict(blur=0.5),
  "dcgan28": dict(model="dcgan28"),
  # issue 19's sample-quality levers
  "nearest_up": dict(model_kw=dict(up="nearest")),
  "diffaug_t": dict(augment="translation"),
  "diffaug_tc": dict(augment="translation,cutout"),
}


def recipe(variant: str, overrides: dict) -> dict:
  if variant not in RECIPES:
    raise SystemExit(f"unknown variant {variant!r}; choose from {sorted(RECIPES)}")
  r = dict(BASE, **RECIPES[variant])
  r.update(overrides)
  return r


def train_config(r: dict) -> gan.GanTrainConfig:
  model = mg.get_model(r["model"], **r["model_kw"])
  opt = lambda lr: optax.adam(lr, b1=r["b1"], b2=r["b2"])
  return gan.GanTrainConfig(
    model,
    loss=mg.GanLoss(**r["loss"]),
    d_opt=opt(r["d_lr"]),
    g_opt=opt(r["g_lr"]),
    d_steps=r["d_steps"],
    ema=r["ema"],
    augment=r["augment"],
  )


def run(variant: str, steps: int, out: str, overrides: dict, seed: int = 0) -> dict:
  r = recipe(variant, overrides)
  cfg = common.base_config()
  cfg.blur = r["blur"]
  feats, finfo = protocol.feature_net(cfg, verbose=False)
  train = train_lib.load_split(cfg, "train", rotations=r["rotations"], verbose=False)
  val = train_lib.load_split(cfg, "val", verbose=False)
  x_train = np.concatenate(train.images)
  rng = np.random.default_rng(seed)
  x_val = np.concatenate(val.images)[rng.permutation(sum(len(x) for x in val.images))[:1000]]
  tc = train_config(r)
  key = jax.random.key(seed)
  state = gan.init(key, tc)
  step = jax.jit(functools.partial(gan.train_step, config=tc))
  t0 = time.perf_counter()
  log = []
  for i in range(steps):
    idx = rng.integers(0, len(x_train), r["batch"])
    state, m = step(state, x_train[idx], jax.random.fold_in(key, i))
    if (i + 1) % max(steps // 10, 1) == 0:
      m = {k: float(v) for k, v in m.items()}
      log.append({"step": i + 1, **m})
      print(
        f"[{variant}] step {i + 1}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items()), flush=True
      )
  train_s = time.perf_counter() - t0
  gen = jax.jit(tc.model.generate)
  z = tc.model.sample_z(jax.random.key(99), 1000)
  g_eval = state.ema_g if r["sample"] == "ema" else state.params.g
  x_gen = np.asarray(gen(g_eval, z))
  x_raw = np.asarray(gen(state.params.g, z[:64]))
  f_gen, f_val = feats(x_gen), feats(x_val)
  scale = float(np.sqrt(np.mean(f_val**2)))
  res = {
    "variant": variant,
    "recipe": r,
    "steps": steps,
    "train_s": round(train_s, 1),
    "ms_per_step": round(1e3 * train_s / steps, 1),
    "kid_x1e3": 1e3 * M.kid(f_gen / scale, f_val / scale),
    "fd": M.frechet_distance(f_gen / scale, f_val / scale),
    "diversity": M.mean_pairwise_distance(f_gen) / M.mean_pairwise_distance(f_val),
    # broken strokes: pieces of ink per sample, against the real images' (research log 26)
    "pieces": float(np.mean(M.stroke_components(x_gen))),
    "pieces_real": float(np.mean(M.stroke_components(x_val))),
    "finite": bool(np.all(np.isfinite(x_gen))),
    "log": log,
    "featnet_heldout_acc": finfo["heldout_acc"],
  }
  d = os.path.join(out, variant)
  os.makedirs(d, exist_ok=True)
  train_lib.save_png(os.path.join(d, "samples.png"), train_lib.image_grid(x_gen[:64]))
  train_lib.save_png(os.path.join(d, "raw_samples.png"), train_lib.image_grid(x_raw))
  train_lib.save_png(os.path.join(d, "real.png"), train_lib.image_grid(x_val[:64]))
  # uint8 keeps 1,000 samples at 0.8 MB for later analysis (stroke connectivity, ...).
  np.savez_compressed(
    os.path.join(d, "samples.npz"),
    samples=np.round((np.clip(x_gen, -1, 1) + 1) * 127.5).astype(np.uint8),
  )
  with open(os.path.join(d, "params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes({"params": state.params, "ema_g": state.ema_g}))
  with open(os.path.join(d, "result.json"), "w") as f:
    json.dump(res, f, indent=1)
  print(
    f"[{variant}] KID x1e3 {res['kid_x1e3']:.1f}  FD {res['fd']:.2f}  diversity "
    f"{res['diversity']:.2f}  pieces {res['pieces']:.2f} (real {res['pieces_real']:.2f})  "
    f"{res['ms_per_step']} ms/step",
    flush=True,
  )
  return res


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="final", help=f"one of {sorted(RECIPES)}, or all")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--out", default="runs/recipe")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--set", nargs="*", default=[], help="overrides key=json, e.g. d_lr=1e-4")
  a = p.parse_args()
  overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
  variants = list(RECIPES) if a.variant == "all" else [a.variant]
  results = [run(v, a.steps, a.out, overrides, a.seed) for v in variants]
  if len(results) > 1:
    print(table(results))


def table(results) -> str:
  """The ablation as markdown: one row per recipe."""
  lines = [
    "| recipe | KID x1e3 | FD | diversity | pieces per sample | ms / step |",
    "|---|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['variant']} | {r['kid_x1e3']:.0f} | {r['fd']:.2f} | "
      f"{r['diversity']:.2f} | {r.get('pieces', float('nan')):.2f} | "
      f"{r['ms_per_step']:.0f} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  main()
