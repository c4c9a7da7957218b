r"""The compute curve: does sample value grow with compute?

For every scale k of ``curve.scales`` (1, 3, 10) a point: the recipe's GAN pre-trained for
k x ``pretrain.steps`` steps, then Reptile meta-trained from it for k x ``train.steps``
meta-steps; every point is scored on validation classes. The commands, recipes and their step
counts are in experiments/configs/compute_curve.py, e.g.
  python experiments/compute_curve.py --config experiments/configs/compute_curve.py:uncond \
      --workdir runs/compute_curve_uncond [--resume] [--mode=train]

The stages, each resumable across sittings (``--resume``: a killed stage continues from its
newest checkpoint, a finished one is skipped):

1. One long pre-training, ``<workdir>/pretrain_s<seed>/`` (a run folder of
   experiments/train_lib.py), run to k x P steps for each k in turn; the checkpoint at
   k x P is copied into point k's folder before the run goes on (the periodic checkpoints
   in between, every ``train.ckpt_every`` steps, are for resuming). Pre-training has no
   schedule and every batch and key is a function of (seed, step) alone, so the checkpoint
   at step s is bitwise an s-step run's (tests/test_compute_curve.py checks it).
2. Point k, ``<workdir>/x<k>/``: a run folder of experiments/omniglot.py whose
   ``train/pretrain_s<seed>/`` holds that checkpoint (loaded, not trained again) and whose
   ``train/reptile_s<seed>/`` meta-trains from it for k x M meta-steps
   (``omniglot.train_all``).
3. Validation scores of each point: its test-time rule tuned as the main job tunes it
   (validation KID over the config's grid, ``protocol.tune_rules``), then fresh samples at
   every T of ``curve.val_steps`` scored as ``val_probe.py`` scores them (KID, fidelity,
   diversity, memorisation, the low-data accuracies; keys not the tuning's), beside the real
   held-out images and jittered copies of the support. Written to
   ``x<k>/eval/results.json``, with the tuned rule (which ``metagan_jax.load_run`` reads).
4. The augmentation protocol on every point at once (experiments/dagan.py's ``run`` with
   ``dagan.split = "val"``, in ``<workdir>/dagan/``): does ``aug + gen`` beat ``aug``?
5. ``<workdir>/compute_curve.{json,md,png}``: every point's scores against its
   pre-training + meta-training steps (the x axis: steps, never hours, since the CPU type
   changes between sittings), copied to ``curve.results_dir/compute_curve_<recipe>.json``
   and ``curve.figures_dir/compute_curve_<recipe>.png``.

``<workdir>/stages.json`` records every stage's seconds in each sitting and the device it
ran on, as information (a sitting killed mid-stage is recorded without seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats as sps  # noqa: E402

import metagan_jax as mg  # noqa: E402
from benchmarks.common import cpu_name  # noqa: E402
from experiments import dagan as dagan_cmd  # noqa: E402
from experiments import omniglot, protocol, train_lib  # noqa: E402
from experiments.configs import compute_curve as curve_cfg  # noqa: E402
from experiments.protocol import dagan as dagan_protocol  # noqa: E402
from experiments.protocol import scoring  # noqa: E402

#: The validation measures of the table and the figure (all of ``scoring.METRICS`` are kept).
SHOWN = ("kid", "fidelity", "diversity")
VAL_KEY = 30_000  # the adaptation keys of the validation scores (val_probe.py's; tuning: 20_000)


# --- the config ---------------------------------------------------------------


def scales(config) -> list[int]:
  """``curve.scales`` as distinct ascending positive integers (raises otherwise)."""
  raw = str(config.curve.scales)
  try:
    ks = train_lib.parse_list(raw, int)
  except ValueError:
    ks = []
  if not ks or any(k < 1 for k in ks) or ks != sorted(set(ks)):
    raise ValueError(
      f"curve.scales={raw!r}: write distinct ascending positive integers, e.g. '1,3,10'."
    )
  return ks


def val_steps(config) -> list[int]:
  """``curve.val_steps``: the adaptation steps T the validation scores sample at."""
  raw = str(config.curve.val_steps)
  try:
    ts = train_lib.parse_list(raw, int)
  except ValueError:
    ts = []
  if not ts or any(t < 0 for t in ts):
    raise ValueError(f"curve.val_steps={raw!r}: write adaptation steps T >= 0, e.g. '10'.")
  return sorted(set(ts))


def check_config(config) -> None:
  """Raises early, naming the field and the fix, for a config the curve cannot run."""
  scales(config)
  val_steps(config)
  methods = train_lib.parse_list(config.methods)
  train_lib.check_methods(methods)
  if not methods or "scratch" in methods:
    raise ValueError(
      f"config.methods={config.methods!r}: the curve trains and scores meta methods "
      f"(e.g. reptile) and transfer; 'scratch' has no training to scale."
    )
  if config.init != "pretrained":
    raise ValueError(
      f"config.init={config.init!r}: every point meta-trains from its pre-trained GAN; "
      f"set --config.init=pretrained."
    )
  for field in ("pretrain", "train"):
    steps = config[field].steps
    if int(steps) != steps or int(steps) < 1:
      raise ValueError(f"config.{field}.steps={steps!r}: the 1x point needs a positive integer.")
  if not train_lib.parse_list(config.meta_seeds, int):
    raise ValueError("config.meta_seeds is empty: name one seed, e.g. --config.meta_seeds=0.")


def point_config(config, k: int) -> ml_collections.ConfigDict:
  """Point k's config: the recipe with k x its pre-training steps and k x its meta-steps."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.pretrain.steps = k * int(config.pretrain.steps)
  c.train.steps = k * int(config.train.steps)
  c.name = f"{config.name}_x{k}"
  return c


def point_dir(workdir: str, k: int) -> str:
  return os.path.join(workdir, f"x{k}")


def pretrain_seeds(config) -> list[int]:
  return sorted(
    {train_lib.pretrain_seed(config, s) for s in train_lib.parse_list(config.meta_seeds, int)}
  )


def _training_key(config) -> dict:
  """What a point's training depends on: a resumed curve must keep it."""
  key = json.loads(train_lib._step_key(config))  # pylint: disable=protected-access
  for k in ("curve", "dagan"):
    key.pop(k, None)
  key["unit_steps"] = [int(config.pretrain.steps), int(config.train.steps)]
  key["meta_seeds"] = train_lib.parse_list(config.meta_seeds, int)
  key["pretrain_per_seed"] = bool(config.pretrain.per_seed)
  return key


def _check_resumable(config, workdir: str, resume: bool) -> None:
  """A workdir with a curve in it needs ``--resume``, and then the same training recipe."""
  path = os.path.join(workdir, "config.json")
  started = os.path.exists(os.path.join(workdir, "stages.json"))
  if started and not resume:
    raise FileExistsError(
      f"{workdir} holds a compute curve already; add --resume to continue it, or choose "
      f"a new --workdir."
    )
  if started and os.path.exists(path):
    with open(path) as f:
      was = _training_key(ml_collections.ConfigDict(json.load(f)))
    now = _training_key(config)
    diff = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    if diff:
      raise ValueError(
        f"{workdir} was trained with another recipe (fields {diff} differ from its "
        f"config.json); resume with the same config, or choose a new --workdir."
      )


# --- bookkeeping --------------------------------------------------------------


def device_name() -> str:
  """The device the stages run on: the CPU's name, and the accelerator's kind if any."""
  dev = jax.devices()[0]
  cpu = f"cpu: {cpu_name()}"
  return cpu if dev.platform == "cpu" else f"{dev.platform}: {dev.device_kind} ({cpu})"


class Stages:
  """``<workdir>/stages.json``: per stage, its steps, whether it finished, and its sittings.

  A sitting is ``{"device", "date", "seconds"}``; one that was killed keeps
  ``"seconds": null``. ``seconds`` is the sum over the sittings that finished theirs.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "stages.json")
    self.enabled = enabled
    self.data: dict = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.data = json.load(f)
    self._t0: dict[str, float] = {}

  def done(self, name: str) -> bool:
    return bool(self.data.get(name, {}).get("done"))

  def begin(self, name: str) -> None:
    st = self.data.setdefault(name, {"done": False, "seconds": 0.0, "sittings": []})
    st["sittings"].append(
      {"device": device_name(), "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": None}
    )
    self._t0[name] = time.perf_counter()
    self.save()

  def end(self, name: str, **info) -> None:
    st = self.data[name]
    st["sittings"][-1]["seconds"] = round(time.perf_counter() - self._t0.pop(name), 1)
    st["seconds"] = round(sum(s["seconds"] or 0.0 for s in st["sittings"]), 1)
    st.update(done=True, **info)
    self.save()

  def save(self) -> None:
    if not self.enabled:
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1)
    os.replace(tmp, self.path)


# --- training -----------------------------------------------------------------


def pretrain(config, workdir: str, split, stages: Stages, progress: bool = True) -> None:
  """The long pre-training, to k x P steps for each scale k in turn; each point gets its
  checkpoint (``x<k>/train/pretrain_s<seed>/checkpoints/<k x P>``) before the run goes on.

  Raises:
    RuntimeError: the long run is past a step that a point has not received yet (its
      point folder was deleted): it no longer keeps that checkpoint.
  """
  for ps in pretrain_seeds(config):
    run_dir = os.path.join(workdir, f"pretrain_s{ps}")
    for k in scales(config):
      cfg_k = point_config(config, k)
      steps = int(cfg_k.pretrain.steps)
      dest = os.path.join(point_dir(workdir, k), "train", f"pretrain_s{ps}", "checkpoints")
      if os.path.isdir(os.path.join(dest, str(steps))):
        continue  # this point has its GAN
      name = f"pretrain_s{ps}_x{k}"
      stages.begin(name)
      train_lib.train_run(cfg_k, "pretrain", ps, run_dir, split, resume=True, progress=progress)
      src = os.path.join(run_dir, "checkpoints", str(steps))
      if not os.path.isdir(src):
        raise RuntimeError(
          f"{run_dir} is past step {steps} and no longer keeps its checkpoint, which point "
          f"x{k} starts from ({dest} is missing); delete {run_dir} and the point folders "
          f"x*/ and run again."
        )
      # copied beside, then renamed into place: a point's checkpoint is whole or absent
      tmp = os.path.join(os.path.dirname(dest), "checkpoint_copy")
      shutil.rmtree(tmp, ignore_errors=True)
      shutil.copytree(src, os.path.join(tmp, str(steps)))
      os.makedirs(dest, exist_ok=True)
      os.rename(os.path.join(tmp, str(steps)), os.path.join(dest, str(steps)))
      shutil.rmtree(tmp, ignore_errors=True)
      stages.end(name, steps=steps)


def train_point(config, workdir: str, k: int, stages: Stages, progress: bool = True) -> dict:
  """Point k's runs (meta-training from its pre-trained GAN): ``{(method, seed): params}``."""
  cfg_k = point_config(config, k)
  pdir = point_dir(workdir, k)
  os.makedirs(pdir, exist_ok=True)
  with open(os.path.join(pdir, "config.json"), "w") as f:  # what load_run reads
    json.dump(cfg_k.to_dict(), f, indent=1)
  name = f"meta_x{k}"
  fresh = not stages.done(name)
  if fresh:
    stages.begin(name)
  params = omniglot.train_all(cfg_k, pdir, resume=True, progress=progress)
  if fresh:
    stages.end(name, steps=int(cfg_k.train.steps))
  return params


# --- scoring ------------------------------------------------------------------


def _stats(per_class_list: list) -> dict:
  """Mean, standard error over classes, and the per-class means of ``[C]`` arrays."""
  x = np.mean(np.stack([np.asarray(v, np.float64) for v in per_class_list]), 0)
  sem = float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
  return {"mean": float(np.mean(x)), "sem": sem, "per_class": x.tolist()}


def validation_scores(config, params_by_run: dict, rules: dict, features_fn) -> dict:
  """Every method's samples on the validation classes at each T of ``curve.val_steps``.

  The classes are ``protocol.val_classes`` (the tuning's); each run adapts with its rule and
  the keys ``fold_in(key(30000 + adapt seed), meta seed)`` (``val_probe.py``'s, not the
  tuning's); metrics are ``scoring.score``'s, pooled per method over meta seeds and
  adaptation seeds, then mean and standard error over classes. ``real``: the held-out
  images scored as samples; ``copy``: jittered copies of the support.
  """
  vc = protocol.val_classes(config)
  sup, held = vc["support"], vc["heldout"]
  feats = protocol.scaled_features(features_fn, held)
  f_sup, f_held = feats(sup), feats(held)
  steps = val_steps(config)
  a_seeds = train_lib.parse_list(config.curve.val_adapt_seeds, int)
  n_gen = int(config.eval.n_gen)
  real, fd_real = scoring.real_scores(config, f_sup, f_held, images=(sup, held, a_seeds[0]))
  copies = scoring.copy_baseline(sup, n_gen, seed=a_seeds[0])
  copy, fd_copy = scoring.score(
    config, feats(copies), f_sup, f_held, images=(copies, sup, held, a_seeds[0])
  )
  out = {
    "classes": vc["names"],
    "k": int(config.eval.k),
    "n_gen": n_gen,
    "adapt_seeds": a_seeds,
    "real": {m: _stats([v]) for m, v in real.items()} | {"fd": float(fd_real)},
    "copy": {m: _stats([v]) for m, v in copy.items()} | {"fd": float(fd_copy)},
    "methods": {},
    "rules": {},
  }
  pooled: dict = {}  # method -> T -> metric -> [per-class arrays]
  for (method, mseed), params in params_by_run.items():
    rule = rules[(method, mseed)]
    out["rules"][f"{method}_s{mseed}"] = protocol.rule_name(rule)
    for a in a_seeds:
      key = jax.random.fold_in(jax.random.key(VAL_KEY + a), mseed)
      gen = scoring.adapt_and_generate(config, params, sup, steps, key, n_gen, rule)
      for t in steps:
        per, fd = scoring.score(config, feats(gen[t]), f_sup, f_held, images=(gen[t], sup, held, a))
        cell = pooled.setdefault(method, {}).setdefault(str(t), {})
        for m, v in per.items():
          cell.setdefault(m, []).append(v)
        cell.setdefault("fd", []).append(fd)
  for method, by_t in pooled.items():
    out["methods"][method] = {
      t: {m: _stats(v) for m, v in cell.items() if m != "fd"} | {"fd": float(np.mean(cell["fd"]))}
      for t, cell in by_t.items()
    }
  return out


def _score_key(config_k, params_by_run: dict) -> dict:
  """What a point's validation scores depend on besides its trained runs."""
  return {
    "eval": config_k.eval.to_dict(),
    "features": config_k.features.to_dict(),
    "val_steps": val_steps(config_k),
    "val_adapt_seeds": train_lib.parse_list(config_k.curve.val_adapt_seeds, int),
    "runs": sorted(f"{m}_s{s}" for m, s in params_by_run),
    "steps": [int(config_k.pretrain.steps), int(config_k.train.steps)],
  }


def score_point(
  config, workdir: str, k: int, params_by_run: dict, features_fn, stages: Stages
) -> dict:
  """Point k's tuned rules and validation scores: ``x<k>/eval/results.json`` (or its copy
  from an earlier sitting with the same settings)."""
  path = os.path.join(point_dir(workdir, k), "eval", "results.json")
  key = protocol.jsonable(_score_key(point_config(config, k), params_by_run))
  if os.path.exists(path):
    with open(path) as f:
      doc = json.load(f)
    if doc.get("key") == key:
      print(f"[score] x{k}: from {path}", flush=True)
      return doc
  name = f"score_x{k}"
  stages.begin(name)
  # Scored with the 1x config: the scores do not depend on the step counts, and every point
  # then shares the compiled adaptation (its programs are cached by the config).
  tuning = protocol.tune_rules(config, params_by_run, features_fn)
  val = validation_scores(config, params_by_run, tuning["rules"], features_fn)
  metrics = {
    f"{m}|{t}|{metric}": {"mean": d["mean"]}
    for m, by_t in val["methods"].items()
    for t, cell in by_t.items()
    for metric, d in cell.items()
    if metric != "fd"
  }
  methods = train_lib.parse_list(config.methods)
  doc = {
    "kind": "compute_curve_point",
    "key": key,
    # what metagan_jax.load_run reads: the tuned rules (and, by default, the first method)
    "summary": {"metrics": metrics},
    "info": {
      "split": "val",
      "rule_dicts": {f"{m}_s{s}": r for (m, s), r in tuning["rules"].items()},
      "headline_method": methods[0],
      "tuning": tuning["scores"],
    },
    "val": val,
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(protocol.jsonable(doc), f, indent=1)
  os.replace(path + ".tmp", path)
  stages.end(name)
  for m, by_t in val["methods"].items():
    for t, cell in by_t.items():
      print(
        f"[score] x{k} {m} T={t}: KID x1e3 {1e3 * cell['kid']['mean']:.1f}, fidelity "
        f"{cell['fidelity']['mean']:.3f}, diversity {cell['diversity']['mean']:.2f}",
        flush=True,
      )
  return json.loads(json.dumps(protocol.jsonable(doc)))


def _row_name(method: str, seed: int, k: int, n_seeds: int) -> str:
  return f"{method}_x{k}" if n_seeds == 1 else f"{method}_s{seed}_x{k}"


def augmentation(config, workdir: str, runs: list, stages: Stages) -> dict:
  """The augmentation protocol (``experiments/dagan.py``'s ``run``) on every point's runs.

  Args:
    runs: ``[(k, method, seed)]``.
  """
  n_seeds = len({s for _, _, s in runs})
  items = []
  for k, method, seed in runs:
    ps = train_lib.pretrain_seed(config, seed)
    folder = f"{method}_s{seed}" if method in train_lib.META_METHODS else f"pretrain_s{ps}"
    path = os.path.abspath(os.path.join(point_dir(workdir, k), "train", folder))
    if any(ch in path for ch in ";:="):
      raise ValueError(
        f"the workdir's path {path!r} has one of ';', ':', '=', which experiments/dagan.py's "
        f"--config.runs cannot hold; choose another --workdir."
      )
    items.append(f"{_row_name(method, seed, k, n_seeds)}={path}:{method}")
  d = ml_collections.ConfigDict(
    {"runs": ";".join(items), "data_dir": config.data_dir, "dagan": config.dagan.to_dict()}
  )
  if d.dagan.split != "val":
    raise ValueError(
      f"dagan.split={d.dagan.split!r}: the compute curve compares its points on validation "
      f"classes; set --config.dagan.split=val."
    )
  fresh = not stages.done("dagan")
  if fresh:
    stages.begin("dagan")
  out = dagan_cmd.run(d, os.path.join(workdir, "dagan"))
  if fresh:
    stages.end("dagan")
  return json.loads(json.dumps(protocol.jsonable(out)))


def _gain(acc: dict, a: str, b: str) -> dict:
  """``a`` minus ``b`` over the classifiers (``dagan.ttest``), with the 95% CI of the
  paired differences (the arms share every classifier's initialisation and batches)."""
  x, y = np.asarray(acc[a], np.float64), np.asarray(acc[b], np.float64)
  diff = x - y
  half = (
    float(sps.t.ppf(0.975, len(diff) - 1) * np.std(diff, ddof=1) / np.sqrt(len(diff)))
    if len(diff) > 1
    else float("nan")
  )
  return dict(
    dagan_protocol.ttest(x, y), ci95=[float(diff.mean()) - half, float(diff.mean()) + half]
  )


# --- the curve ----------------------------------------------------------------


def summarise(config, points: dict, dagan_out: dict | None, stages: Stages) -> dict:
  """The curve's record: every point's steps, scores and stage seconds (steps are the axis).

  The validation scores pool a method's meta seeds; the augmentation protocol's rows are the
  first meta seed's (one seed by default).
  """
  ks = scales(config)
  seeds = train_lib.parse_list(config.meta_seeds, int)
  P, M = int(config.pretrain.steps), int(config.train.steps)
  rows = {}
  for r in (dagan_out or {}).get("rows", []):
    rows[(r["name"], int(r["T"]))] = r
  out_points = []
  for k in ks:
    doc = points[k]
    p = {
      "scale": k,
      "pretrain_steps": k * P,
      "meta_steps": k * M,
      "steps": k * (P + M),
      "val": doc["val"]["methods"],
      "rules": doc["val"]["rules"],
      "dagan": {},
      "seconds": {
        "pretrain": sum(
          stages.data.get(f"pretrain_s{ps}_x{j}", {}).get("seconds", 0.0)
          for ps in pretrain_seeds(config)
          for j in ks
          if j <= k
        ),
        "meta": stages.data.get(f"meta_x{k}", {}).get("seconds"),
        "score": stages.data.get(f"score_x{k}", {}).get("seconds"),
      },
    }
    for method in train_lib.parse_list(config.methods):
      for (name, t), r in sorted(rows.items(), key=lambda x: x[0][1]):
        if name != _row_name(method, seeds[0], k, len(seeds)):
          continue
        acc = r["acc"]
        p["dagan"].setdefault(method, {})[str(t)] = {
          **{a: float(np.mean(v)) for a, v in acc.items()},
          "aug_gen_vs_aug": _gain(acc, "aug_gen", "aug"),
          "real_gen_vs_real": _gain(acc, "real_gen", "real"),
          "pool": r["pool"],
          "psi": r.get("psi", 1.0),
        }
    out_points.append(p)
  val0 = points[ks[0]]["val"]
  doc = {
    "kind": "compute_curve",
    "recipe": str(config.curve.recipe),
    "name": config.name,
    "scales": ks,
    "unit": {"pretrain_steps": P, "meta_steps": M},
    "methods": train_lib.parse_list(config.methods),
    "val_steps": val_steps(config),
    "points": out_points,
    "val_classes": len(val0["classes"]),
    "val_real": val0["real"],
    "val_copy": val0["copy"],
    "dagan": None
    if dagan_out is None
    else {
      "classes": dagan_out["classes"],
      "k": dagan_out["k"],
      "subsets": dagan_out["subsets"],
      "steps": dagan_out["steps"],
      "pool": int(config.dagan.pool),
      "base": {a: float(np.mean(v)) for a, v in dagan_out["base"]["acc"].items()},
      "seconds": stages.data.get("dagan", {}).get("seconds"),
    },
    "stages": stages.data,
    "device": device_name(),
    "accelerator": curve_cfg.ACCELERATOR,
    "config": config.to_dict(),
  }
  return protocol.jsonable(doc)


def _num(x: float) -> str:
  return f"{x:,.0f}"


def _fmt(x: float) -> str:
  """Three significant digits, and whole numbers from 100 on (KID x1e3 runs to thousands)."""
  return f"{x:,.0f}" if np.isfinite(x) and abs(x) >= 100 else f"{x:.3g}"


def _pm(d: dict, scale: float = 1.0) -> str:
  """``mean ± standard error`` of a :func:`_stats` dict, times ``scale``."""
  sem = d.get("sem")
  tail = f" ± {_fmt(scale * sem)}" if sem is not None and np.isfinite(sem) else ""
  return f"{_fmt(scale * d['mean'])}{tail}"


def markdown(doc: dict) -> str:
  """The curve's table and its notes (the results page renders the same from the JSON)."""
  lines = [
    f"**The compute curve, recipe `{doc['recipe']}`**: each point pre-trained for "
    f"k x {_num(doc['unit']['pretrain_steps'])} steps and meta-trained for k x "
    f"{_num(doc['unit']['meta_steps'])} meta-steps; scored on {doc['val_classes']} "
    f"validation classes (mean ± standard error over classes).",
    "",
    "| scale | pre-training steps | meta-steps | steps | method | T | KID x1e3 | fidelity | "
    "diversity | aug + gen vs aug, points [95% CI] (p) | pool fidelity / real |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for p in doc["points"]:
    for method, by_t in p["val"].items():
      for t, cell in by_t.items():
        dg = p["dagan"].get(method, {}).get(str(t))
        if dg is None:
          gain = fid_pool = "-"
        else:
          g = dg["aug_gen_vs_aug"]
          lo, hi = g["ci95"]
          p_val = f"{g['p']:.3f}" if g["p"] >= 0.001 else "<0.001"
          gain = f"{100 * g['gain']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({p_val})"
          fid_pool = f"{dg['pool']['fidelity_ratio']:.2f}"
        lines.append(
          f"| {p['scale']}x | {_num(p['pretrain_steps'])} | {_num(p['meta_steps'])} | "
          f"{_num(p['steps'])} | {method} | {t} | {_pm(cell['kid'], 1e3)} | "
          f"{_pm(cell['fidelity'])} | {_pm(cell['diversity'])} | {gain} | {fid_pool} |"
        )
  real, copy = doc["val_real"], doc["val_copy"]
  notes = [
    f"References on the same classes: real held-out images KID x1e3 {_pm(real['kid'], 1e3)}, "
    f"fidelity {_pm(real['fidelity'])}; jittered copies of the support KID x1e3 "
    f"{_pm(copy['kid'], 1e3)}, fidelity {_pm(copy['fidelity'])}. Each point's test-time rule "
    f"was tuned on these classes by validation KID, as the main job tunes it."
  ]
  dg = doc.get("dagan")
  if dg:
    base = ", ".join(f"{a} {100 * v:.1f}%" for a, v in dg["base"].items())
    notes.append(
      f"Augmentation protocol: {dg['classes']} validation classes, K = {dg['k']}, "
      f"{dg['subsets']} classifiers per arm, {dg['steps']} steps each, {dg['pool']} "
      f"generated images per class and subset; without samples: {base}."
    )
  secs = []
  for p in doc["points"]:
    s = p["seconds"]
    parts = [f"pre-training {s['pretrain']:.0f} s" if s.get("pretrain") else None]
    parts += [f"{n} {s[n]:.0f} s" for n in ("meta", "score") if s.get(n)]
    secs.append(f"{p['scale']}x: " + ", ".join(x for x in parts if x))
  devices = sorted(
    {st["device"] for v in doc["stages"].values() for st in v.get("sittings", [])}
  ) or [doc["device"]]
  notes.append(
    "Seconds per stage, information only (the axis is steps: the CPU type changes between "
    "sittings; pre-training counted to each point): "
    + "; ".join(secs)
    + (f"; augmentation protocol {dg['seconds']:.0f} s" if dg and dg.get("seconds") else "")
    + f". Device(s): {'; '.join(devices)}."
  )
  acc = doc["accelerator"]
  notes.append(f"Accelerator variant ({acc['configs']}: {acc['changes']}): time {acc['time']}.")
  return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def plot(doc: dict, path: str) -> None:
  """KID, fidelity and the augmentation gain against pre-training + meta-training steps."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  x = [p["steps"] for p in doc["points"]]
  lines = sorted({(m, t) for p in doc["points"] for m, by_t in p["val"].items() for t in by_t})
  for m, t in lines:
    label = f"{m}, T = {t}"
    kid = [1e3 * p["val"][m][t]["kid"]["mean"] for p in doc["points"]]
    kid_e = [1e3 * p["val"][m][t]["kid"]["sem"] for p in doc["points"]]
    fid = [p["val"][m][t]["fidelity"]["mean"] for p in doc["points"]]
    fid_e = [p["val"][m][t]["fidelity"]["sem"] for p in doc["points"]]
    axes[0].errorbar(x, kid, yerr=kid_e, marker="o", ms=4, capsize=3, label=label)
    axes[1].errorbar(x, fid, yerr=fid_e, marker="o", ms=4, capsize=3, label=label)
    gains = [p["dagan"].get(m, {}).get(t) for p in doc["points"]]
    if all(g is not None for g in gains):
      g = np.array([100 * d["aug_gen_vs_aug"]["gain"] for d in gains])
      ci = np.array([[100 * c for c in d["aug_gen_vs_aug"]["ci95"]] for d in gains])
      axes[2].errorbar(
        x, g, yerr=[g - ci[:, 0], ci[:, 1] - g], marker="o", ms=4, capsize=3, label=label
      )
  axes[1].axhline(doc["val_real"]["fidelity"]["mean"], ls=":", color="black", label="real")
  axes[2].axhline(0.0, ls=":", color="gray")
  for ax, label in zip(
    axes,
    (
      "KID x1e3 (lower is better)",
      "class fidelity (higher is better)",
      "aug + gen minus aug, points (95% CI)",
    ),
  ):
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{p['scale']}x\n{_num(p['steps'])}" for p in doc["points"]], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("pre-training + meta-training steps")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7)
  fig.suptitle(f"The compute curve, recipe {doc['recipe']} (validation classes)", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _publish(config, workdir: str, doc: dict) -> dict:
  """Writes the curve to the workdir, then copies it to ``curve.results_dir`` and
  ``curve.figures_dir`` (paths relative to the repository; ``""``: not copied)."""
  paths = {
    "json": os.path.join(workdir, "compute_curve.json"),
    "md": os.path.join(workdir, "compute_curve.md"),
    "png": os.path.join(workdir, "compute_curve.png"),
  }
  with open(paths["json"], "w") as f:
    json.dump(doc, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown(doc))
  plot(doc, paths["png"])
  name = f"compute_curve_{doc['recipe']}"
  for field, ext in (("results_dir", "json"), ("figures_dir", "png")):
    folder = str(config.curve.get(field, "") or "")
    if folder:
      folder = folder if os.path.isabs(folder) else os.path.join(ROOT, folder)
      os.makedirs(folder, exist_ok=True)
      paths[f"published_{ext}"] = os.path.join(folder, f"{name}.{ext}")
      shutil.copyfile(paths[ext], paths[f"published_{ext}"])
  return paths


def train_and_evaluate(
  config, workdir: str, resume: bool = False, mode: str = "all", progress: bool = True
) -> dict:
  """The whole curve: the long pre-training, every point's meta-training, their scores.

  Args:
    config: a config of ``experiments/configs/compute_curve.py``.
    workdir: output folder.
    resume: continue a curve in ``workdir`` (every stage from its newest checkpoint or
      saved result; finished ones are skipped).
    mode: ``"all"``, or ``"train"`` (pre-training and meta-training only).
    progress: show tqdm bars.

  Returns:
    ``{"doc", "table", "paths", "workdir", "wall_s"}`` (``mode="all"``) or
    ``{"params": {k: {(method, seed): params}}}`` (``mode="train"``).

  Raises:
    FileExistsError: ``workdir`` holds a curve and ``resume`` is False.
    ValueError: a bad config, or a resumed curve with another training recipe.
  """
  if mode not in ("all", "train"):
    raise ValueError(f"mode must be 'all' or 'train', got {mode!r}.")
  check_config(config)
  _check_resumable(config, workdir, resume)
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  main = train_lib.is_main_process()
  stages = Stages(workdir, enabled=main)
  stages.save()  # stages.json marks the workdir as a started curve
  if main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=1)
  split = train_lib.load_split(config, "train", verbose=main)
  pretrain(config, workdir, split, stages, progress=progress)
  params = {k: train_point(config, workdir, k, stages, progress) for k in scales(config)}
  if mode == "train":
    return {"params": params}
  features_fn, _ = protocol.feature_net(config, verbose=main)
  points = {
    k: score_point(config, workdir, k, params[k], features_fn, stages) for k in scales(config)
  }
  runs = [(k, m, s) for k in scales(config) for (m, s) in params[k]]
  dagan_out = augmentation(config, workdir, runs, stages)
  doc = summarise(config, points, dagan_out, stages)
  paths = _publish(config, workdir, doc) if main else {}
  table = markdown(doc)
  return {
    "doc": doc,
    "table": table,
    "paths": paths,
    "workdir": workdir,
    "wall_s": time.perf_counter() - t_start,
  }


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  FLAGS = flags.FLAGS
  mg.compile_cache.enable()  # as experiments/omniglot.py: compiled programs persist
  with mg.compile_cache.repairing():
    out = train_and_evaluate(FLAGS.config, FLAGS.workdir, resume=FLAGS.resume, mode=FLAGS.mode)
  if out.get("table"):
    print(out["table"])
    print(f"Wall time {out['wall_s']:.0f} s; outputs in {out['workdir']}/compute_curve.*")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    "config", None, "experiments/configs/compute_curve.py:<recipe> (uncond, cond, ...)."
  )
  flags.DEFINE_string("workdir", None, "Output folder.")
  flags.DEFINE_bool("resume", False, "Continue a killed curve (finished stages are skipped).")
  flags.DEFINE_enum("mode", "all", ["all", "train"], "Everything, or training only.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
