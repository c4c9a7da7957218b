"""Conditional pre-training pilot: train cfsgan28 on meta-training classes, then draw T = 0
samples from validation classes' supports.

Writes ``<workdir>/val_t0.png``: per row, a validation class's K support images (left, after
a blank column) and 8 samples drawn from that support alone; and ``<workdir>/val_t0.json``:
the main protocol's measures of ``eval.n_gen`` T = 0 samples per class on
``eval.tune_classes`` validation classes (feature network of the protocol), beside the
held-out real images and jittered copies of the support. Never reads test classes.

  python experiments/cond_pilot.py --config experiments/configs/cond_pilot.py \
      --workdir runs/cond_pilot
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import train_lib  # noqa: E402
from experiments.protocol import classes, features, scoring  # noqa: E402


def val_t0_grid(config, state, n_samples: int = 8) -> np.ndarray:
  """Rows of [K support images, blank, n_samples T = 0 samples] for validation classes."""
  model = train_lib.get_model(config)
  g = train_lib.pretrained_params(state).g
  split = train_lib.load_split(config, "val", verbose=False)
  k, rows = int(config.eval.k), []
  picks = np.linspace(0, len(split.images) - 1, int(config.eval.grid_classes)).astype(int)
  gen = jax.jit(model.generate)
  for i, c in enumerate(picks):
    x = np.asarray(split.images[c], np.float32)
    support = x[np.random.default_rng(i).permutation(len(x))[:k]]
    z = model.sample_z(jax.random.key(i), n_samples)
    samples = np.asarray(gen(g, z, support))
    rows.append(np.concatenate([support, -np.ones_like(support[:1]), samples]))
  return train_lib.image_grid(np.concatenate(rows), cols=k + 1 + n_samples)


def score_val_t0(config, state) -> dict:
  """Fidelity, diversity, memorisation, KID and the linear probe's low-data accuracy of T = 0
  samples on validation classes, beside the real and copy references (the main protocol's
  definitions, :mod:`experiments.protocol.scoring`)."""
  model = train_lib.get_model(config)
  g = train_lib.pretrained_params(state).g
  val = classes.val_classes(config)
  sup, held = val["support"].astype(np.float32), val["heldout"].astype(np.float32)
  feat_fn, info = features.feature_net(config)
  feat = features.scaled_features(feat_fn, held.reshape(-1, *held.shape[2:]))
  gen = jax.jit(model.generate)
  n = int(config.eval.n_gen)
  x_gen = np.stack(
    [
      np.asarray(gen(g, model.sample_z(jax.random.key(100 + c), n), sup[c]))
      for c in range(len(sup))
    ]
  )
  x_copy = scoring.copy_baseline(sup, n, seed=0)

  def f(x):
    return feat(x.reshape(-1, *x.shape[2:])).reshape(*x.shape[:2], -1)

  f_sup, f_held = f(sup), f(held)
  rows = {
    "t0": scoring.score(config, f(x_gen), f_sup, f_held),
    "copy": scoring.score(config, f(x_copy), f_sup, f_held),
    "real": scoring.real_scores(config, f_sup, f_held),
  }
  out = {"classes": len(sup), "n_gen": n, "feature_net": info}
  for name, (per, fd) in rows.items():
    out[name] = {m: float(np.mean(v)) for m, v in per.items()} | {"fd": float(fd)}
  out["fidelity_vs_real"] = out["t0"]["fidelity"] / out["real"]["fidelity"]
  return out


def run(config, work: str, resume: bool = False, progress: bool = True) -> dict:
  """Pre-trains (or loads) the conditional GAN in ``work``; writes the picture and the scores."""
  split = train_lib.load_split(config, "train")
  seed = train_lib.pretrain_seed(config, train_lib.parse_list(config.meta_seeds, int)[0])
  state = train_lib.train_run(
    config, "pretrain", seed, os.path.join(work, "pretrain"), split, resume, progress
  )
  path = os.path.join(work, "val_t0.png")
  train_lib.save_png(path, val_t0_grid(config, state))
  print(f"wrote {path}")
  scores = score_val_t0(config, state)
  with open(os.path.join(work, "val_t0.json"), "w") as fh:
    json.dump(scores, fh, indent=1, default=str)
  for name in ("t0", "copy", "real"):
    r = scores[name]
    print(
      f"{name:5s} fidelity {r['fidelity']:.3f}  diversity {r['diversity']:.3f}  "
      f"memorisation {r['memorisation']:.3f}  KID x1e3 {1e3 * r['kid']:.1f}  "
      f"probe acc {r['lowdata_acc']:.3f}"
    )
  print(f"fidelity vs real {scores['fidelity_vs_real']:.2f}x")
  return scores


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
  flags.DEFINE_string("workdir", None, "Output folder.")
  flags.DEFINE_bool("resume", False, "Resume (or just load) a run in --workdir.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: run(_CONFIG.value, flags.FLAGS.workdir, flags.FLAGS.resume) and None)
