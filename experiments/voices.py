r"""Meta-learn a GAN across speakers; adapt it to an unheard speaker from four of their recordings.

Run (the voices main job; prints the results table):
  python experiments/voices.py --config experiments/configs/voices_short.py \
      --workdir runs/voices_short
All six folds, three seeds and second-order MAML (the numbers the docs judge on):
  python experiments/voices.py --config experiments/configs/voices_full.py \
      --workdir runs/voices_full
Options: --resume (continue a killed run), --mode=train (train the folds, no scoring), any
config field as --config.folds=0,1.

Each fold is one run folder, ``<workdir>/fold<f>/``, laid out as an Omniglot run
(``config.json``, ``train/<method>_s<seed>/``, ``eval/results.json``), so that
``metagan_jax.load_run`` and ``metagan generate`` take it. The workdir gets
``eval/`` with the pooled table (``results.md``), ``summary.json``, the picture
and WAV files of supports, adapted samples and ``transfer``'s.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top

import metagan_jax as mg  # pylint: disable=g-import-not-at-top
from experiments import omniglot, train_lib  # pylint: disable=g-import-not-at-top
from experiments.protocol import jsonable, oracles, voices  # pylint: disable=g-import-not-at-top
from experiments.protocol import voices_report as report  # pylint: disable=g-import-not-at-top


def headline_method(config, tuning_by_fold: dict) -> dict:
  """The headline meta-learner, fixed on the validation speakers before any test score is read.

  ``eval.headline_method`` if set; otherwise the meta method whose tuned rule
  has the highest validation voice margin, averaged over the folds (ties: the
  first in ``config.methods``).
  """
  methods = [m for m in train_lib.parse_list(config.methods) if m in train_lib.META_METHODS]
  fixed = str(config.eval.get("headline_method", "") or "")
  val = {}
  for m in methods:
    best = [
      max(t["method_scores"][m].values())
      for t in tuning_by_fold.values()
      if m in t["method_scores"]
    ]
    if best:
      val[m] = float(np.mean(best))
  if fixed:
    return {"method": fixed, "rule": "config.eval.headline_method", "validation_margin": val}
  if not val:
    return {
      "method": methods[0] if methods else "transfer",
      "rule": "no tuning grid",
      "validation_margin": val,
    }
  best = max(methods, key=lambda m: val.get(m, -np.inf))
  return {"method": best, "rule": "highest validation voice margin", "validation_margin": val}


def fold_config(config, fold: int):
  c = copy.deepcopy(config)
  c.fold = int(fold)
  return c


def train_fold(config, fold_dir: str, resume: bool = False, progress: bool = True) -> dict:
  """Trains one fold's runs (``omniglot.train_all``) and makes ``fold_dir`` a loadable run.

  ``fold_dir/config.json`` gets the fold's config and its spectrogram (settings and the
  meta-training speakers' moments), which ``metagan_jax.load_run`` and ``metagan
  generate`` read. Returns ``{(method, seed): parameters}``.
  """
  os.makedirs(fold_dir, exist_ok=True)
  params = omniglot.train_all(config, fold_dir, resume=resume, progress=progress)
  spg = voices.fold_spectrogram(config)
  with open(os.path.join(fold_dir, "config.json"), "w") as fh:
    json.dump(dict(config.to_dict(), spectrogram=spg.to_dict()), fh, indent=1)
  return params


def write_fold_results(fold_dir: str, cfg, res: dict, rules: dict, headline: str) -> None:
  """``fold<f>/eval/results.json``: what ``metagan_jax.load_run`` reads (rules, headline)."""
  os.makedirs(os.path.join(fold_dir, "eval"), exist_ok=True)
  t = int(cfg.eval.headline)
  metrics = {}
  for name, row in res["rows"].items():
    parts = name.split("|")
    if len(parts) == 3 and int(parts[2]) == t:
      for m, v in row["per_class"].items():
        metrics.setdefault(f"{parts[0]}|{t}|{m}", []).append(float(np.mean(v)))
  doc = {
    "summary": {"metrics": {k: {"mean": float(np.mean(v))} for k, v in metrics.items()}},
    "info": {
      "rule_dicts": {f"{m}_s{s}": r for (m, s), r in rules.items()},
      "headline_method": headline,
      "test_speaker": res["speaker"],
      "indices": res["cls"]["indices"],
    },
  }
  with open(os.path.join(fold_dir, "eval", "results.json"), "w") as f:
    json.dump(jsonable(doc), f, indent=1)


def train_and_evaluate(
  config, workdir: str, resume: bool = False, progress: bool = True, mode: str = "all"
) -> dict:
  """Every fold: train, tune on its validation speaker, score on its test speaker; then pool.

  Args:
    mode: ``"all"``, or ``"train"``: train every fold's runs (each fold folder then loads
      with ``metagan_jax.load_run(..., method=...)``) and skip the oracles and scoring.

  Returns ``{"table", "summary", "workdir", "wall_s"}`` (``mode="train"``: ``{"params"}``).
  """
  if mode not in ("all", "train"):
    raise ValueError(f"mode must be 'all' or 'train', got {mode!r}.")
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dict(config.to_dict(), kind="voices"), f, indent=1)
  if mode == "train":
    return {
      "params": {
        f: train_fold(fold_config(config, f), os.path.join(workdir, f"fold{f}"), resume, progress)
        for f in train_lib.parse_list(config.folds, int)
      }
    }
  times = {}
  t0 = time.perf_counter()
  orc, orc_info = oracles.oracles(config)
  times["oracles"] = round(time.perf_counter() - t0, 1)
  print(
    f"[oracles] speaker accuracy {orc_info['speaker_acc_real']:.3f} real, "
    f"{orc_info['speaker_acc_roundtrip']:.3f} round trip; digit accuracy "
    f"{orc_info['digit_acc_real']:.3f} real, {orc_info['digit_acc_roundtrip']:.3f} round trip "
    f"(held-out recordings 25-49; {orc_info['cache']})",
    flush=True,
  )
  folds = train_lib.parse_list(config.folds, int)
  per_fold, tuning, params_by_fold = {}, {}, {}
  for f in folds:
    cfg = fold_config(config, f)
    t0 = time.perf_counter()
    params = train_fold(cfg, os.path.join(workdir, f"fold{f}"), resume=resume, progress=progress)
    times[f"fold{f}_train"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    tuning[f] = voices.tune_rules(cfg, params, orc)
    times[f"fold{f}_tune"] = round(time.perf_counter() - t0, 1)
    params_by_fold[f] = params
  head = headline_method(config, tuning)
  print(f"[headline] {head['method']} ({head['rule']}: {head['validation_margin']})", flush=True)
  for f in folds:
    cfg = fold_config(config, f)
    t0 = time.perf_counter()
    per_fold[f] = voices.evaluate_fold(cfg, params_by_fold[f], orc, tuning[f]["rules"])
    times[f"fold{f}_eval"] = round(time.perf_counter() - t0, 1)
    write_fold_results(
      os.path.join(workdir, f"fold{f}"), cfg, per_fold[f], tuning[f]["rules"], head["method"]
    )
  summary = voices.summarise(config, per_fold)
  eval_dir = os.path.join(workdir, "eval")
  os.makedirs(eval_dir, exist_ok=True)
  t_total = time.perf_counter() - t_start
  info = {
    "oracles": orc_info,
    "headline": head,
    "rules": {
      f"fold{f}": {f"{m}_s{s}": voices.rule_name(r) for (m, s), r in t["rules"].items()}
      for f, t in tuning.items()
    },
    "tuning": {f"fold{f}": t["method_scores"] for f, t in tuning.items()},
    "times_s": times,
    "wall_s": round(t_total, 1),
    "classes": {f"fold{f}": r["classes"] for f, r in per_fold.items()},
  }
  outputs = report.save_picture_and_wavs(config, per_fold, head["method"], eval_dir)
  info["clips"] = outputs["clips"]
  table = report.markdown_table(config, summary, info)
  with open(os.path.join(eval_dir, "summary.json"), "w") as fh:
    json.dump(
      jsonable({"kind": "voices", "summary": summary, "info": info, "config": config.to_dict()}),
      fh,
      indent=1,
    )
  with open(os.path.join(eval_dir, "results.md"), "w") as fh:
    fh.write(table + f"\n\nWall time: {t_total:.0f} s.\n")
  return {"table": table, "summary": summary, "workdir": workdir, "wall_s": t_total}


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  del argv
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  mg.compile_cache.enable()
  with mg.compile_cache.repairing():
    out = train_and_evaluate(
      FLAGS.config, FLAGS.workdir, resume=FLAGS.resume, progress=True, mode=FLAGS.mode
    )
  if FLAGS.mode == "train":
    return
  print(out["table"])
  print(f"\nWall time {out['wall_s']:.0f} s; outputs in {out['workdir']}/eval/")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments/configs/voices_short.py"), "Experiment config file."
  )
  flags.DEFINE_string("workdir", "runs/voices_short", "Output folder.")
  flags.DEFINE_bool("resume", False, "Continue a killed run from its newest checkpoints.")
  flags.DEFINE_enum("mode", "all", ["all", "train"], "Run everything, or training only.")
  app.run(main)
