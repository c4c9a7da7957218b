r"""Short experiments on validation classes: adapt trained runs with rule variants and score them.

The research-log tool for sample quality: every method of a run folder of
experiments/omniglot.py adapts to ``--classes`` classes of the validation
alphabets (never the test classes) with its tuned test-time rule, changed by
each ``--variants`` entry, and is scored with the protocol's metrics at one T.
Run (about 1 min per variant and method on 2 CPU cores):
  python experiments/val_probe.py --run runs/omniglot_short --methods reptile,transfer \
      --variants '{"base": {}, "freeze_d12": {"d_trainable": "conv3,fc"}}'
A variant is a set of rule fields (``opt``, ``lr``, ``g_trainable``,
``d_trainable``, ``augment``, ``n_fake``, ``psi``) over the run's tuned rule. ``--run`` may list several
run folders (comma-separated) to compare recipes; each then uses its own rule.

Prints one markdown row per (run, method, variant): means over meta seeds,
adaptation seeds and classes, and the real images' ceiling; writes a sample
grid per row to ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import metagan_jax as mg  # pylint: disable=g-import-not-at-top
from experiments import protocol, train_lib  # pylint: disable=g-import-not-at-top
from experiments.protocol import scoring  # pylint: disable=g-import-not-at-top
from metagan_jax import metrics as M  # pylint: disable=g-import-not-at-top

COLUMNS = (
  "kid",
  "fidelity",
  "diversity",
  "memorisation",
  "lowdata_acc",
  "lowdata_cnn_acc",
  "pieces",
)


def probe(
  run_dir: str,
  methods: list[str],
  variants: dict,
  t: int,
  adapt_seeds: list[int],
  n_classes: int,
  out_dir: str | None = None,
  cnn_steps: int | None = None,
) -> list[dict]:
  """One row ``{run, method, variant, <metric>: mean, ...}`` per method and variant."""
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.eval.tune_classes = n_classes
  if cnn_steps is not None:  # runs from before the CNN metric lack its fields
    for k, v in ml_collections.ConfigDict(
      {"cnn_steps": cnn_steps, "cnn_batch": 64, "cnn_lr": 1e-3, "cnn_shift": 0.075}
    ).items():
      if k == "cnn_steps" or k not in config.eval:
        config.eval[k] = v
  features_fn, _ = protocol.feature_net(config, verbose=False)
  vc = protocol.val_classes(config)
  feats = protocol.scaled_features(features_fn, vc["heldout"])
  f_sup, f_held = feats(vc["support"]), feats(vc["heldout"])
  rows = []
  real, _ = scoring.real_scores(config, f_sup, f_held, images=(vc["support"], vc["heldout"], 0))
  rows.append(
    {
      "run": run_dir,
      "method": "real",
      "variant": "",
      **{m: float(np.mean(v)) for m, v in real.items()},
      "pieces": _pieces(vc["heldout"]),
    }
  )
  real_only = scoring.lowdata_accuracy(config, f_sup, f_held)
  cnn_only = (
    scoring.lowdata_cnn_accuracy(config, vc["support"], vc["heldout"], seed=0)
    if scoring._cnn_on(config)
    else np.nan
  )  # pylint: disable=protected-access
  rows.append(
    {
      "run": run_dir,
      "method": "K real only",
      "variant": "",
      "lowdata_acc": float(np.mean(real_only)),
      "lowdata_cnn_acc": float(np.mean(cnn_only)),
    }
  )
  seeds = train_lib.parse_list(config.meta_seeds, int)
  for method in methods:
    runs = {s: mg.load_run(run_dir, method=method, seed=s) for s in seeds}
    for vname, change in variants.items():
      t0 = time.perf_counter()
      vals, grid = {}, None
      for s, run in runs.items():
        rule = dict(run.rule, **change)
        if "lr_mult" in rule:  # load_run's meta_params carry the run's own multiplier already
          rule["lr_mult"] = rule["lr_mult"] / run.rule.get("lr_mult", 1.0)
        meta = runs[s].meta_params
        for a in adapt_seeds:
          key = jax.random.fold_in(jax.random.key(30_000 + a), s)  # not the tuning's 20_000
          gen = scoring.adapt_and_generate(
            config, meta, vc["support"], [t], key, config.eval.n_gen, rule
          )[t]
          per, _ = scoring.score(
            config, feats(gen), f_sup, f_held, images=(gen, vc["support"], vc["heldout"], a)
          )
          for m, v in per.items():
            vals.setdefault(m, []).append(np.mean(v))
          vals.setdefault("pieces", []).append(_pieces(gen))
          if grid is None:
            grid = gen
      row = {
        "run": run_dir,
        "method": method,
        "variant": vname,
        **{m: float(np.mean(v)) for m, v in vals.items()},
        "seconds": time.perf_counter() - t0,
      }
      rows.append(row)
      print(_row(row), flush=True)
      if out_dir:
        name = f"{os.path.basename(run_dir.rstrip('/'))}_{method}_{vname}.png"
        train_lib.save_png(
          os.path.join(out_dir, name),
          train_lib.image_grid(
            np.concatenate([vc["support"][:6], grid[:6, :8]], 1).reshape(-1, *grid.shape[2:]),
            cols=config.eval.k + 8,
          ),
        )
  return rows


def _pieces(imgs) -> float:
  """Mean connected pieces of ink per image of ``[..., H, W, 1]`` (real Omniglot: 1.2-1.6)."""
  imgs = np.asarray(imgs)
  return float(np.mean(M.stroke_components(imgs.reshape(-1, *imgs.shape[-3:]))))


def _row(r: dict) -> str:
  cells = [
    f"{r[m]:.3g}" if m == "kid" and m in r else (f"{r[m]:.2f}" if m in r else "") for m in COLUMNS
  ]
  return (
    f"| {os.path.basename(r['run'].rstrip('/'))} | {r['method']} | {r['variant']} | "
    + " | ".join(cells)
    + " |"
  )


def main():
  import argparse  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--run", required=True, help="run folder(s), comma-separated")
  ap.add_argument("--methods", default="reptile,transfer")
  ap.add_argument("--variants", default='{"base": {}}', help="JSON {name: rule fields}")
  ap.add_argument("--t", type=int, default=10)
  ap.add_argument("--adapt_seeds", default="0,1")
  ap.add_argument("--classes", type=int, default=20)
  ap.add_argument(
    "--cnn_steps",
    type=int,
    default=None,
    help="CNN low-data metric steps (default: the run's config, 300 if absent)",
  )
  ap.add_argument("--out", default="runs/val_probe", help="sample grids; '' for none")
  ap.add_argument("--json", default="", help="also write the rows to this file")
  a = ap.parse_args()
  variants = json.loads(a.variants)
  print("| run | method | variant | " + " | ".join(COLUMNS) + " |")
  print("|---|---|---|" + "---|" * len(COLUMNS))
  rows = []
  for run_dir in [r for r in a.run.split(",") if r]:
    with open(os.path.join(run_dir, "config.json")) as f:
      has_cnn = "cnn_steps" in json.load(f)["eval"]
    cnn = a.cnn_steps if a.cnn_steps is not None else (None if has_cnn else 300)
    got = probe(
      run_dir,
      train_lib.parse_list(a.methods),
      variants,
      a.t,
      train_lib.parse_list(a.adapt_seeds, int),
      a.classes,
      a.out or None,
      cnn,
    )
    for r in got[:2]:
      print(_row(r))
    rows += got
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
