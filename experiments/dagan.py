"""The augmentation protocol on finished runs: one command, one table.

For every run of ``--config.runs`` and every T of ``dagan.sample_steps``, a pool of
generated images per class and K-subset, then the arms' classifiers
(``experiments/protocol/dagan.py``; ``real``, ``aug`` and the control ``aug_copies``
once, shared by all rows), their curves and t-tests, and the pool's class fidelity and
diversity. With ``dagan.filter=prototype``, the pool is also selected from
``dagan.filter_candidates`` times as many samples and the generated arms run again on
it. Writes ``<workdir>/dagan.json``, ``dagan.md`` (the table) and ``<row>_T<t>.png``
(per class: the K images, then pool samples). See experiments/configs/dagan.py for the
commands.
"""

import dataclasses
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import metagan_jax as mg  # noqa: E402
from experiments import train_lib  # noqa: E402
from experiments.configs import common  # noqa: E402
from experiments.protocol import dagan, features, report  # noqa: E402
from metagan_jax import metrics as M  # noqa: E402


def parse_runs(spec: str) -> list[tuple[str, str, str]]:
  """``"name=path[:method];..."`` -> ``[(name, path, method)]`` (method ``""``: the run's)."""
  rows = []
  for item in filter(None, (s.strip() for s in spec.split(";"))):
    if "=" not in item:
      raise ValueError(f"runs entry {item!r}: write name=path[:method].")
    name, rest = item.split("=", 1)
    path, _, method = rest.partition(":")
    rows.append((name.strip(), path.strip(), method.strip()))
  if not rows:
    raise ValueError("--config.runs is empty: name at least one run, name=path[:method].")
  return rows


def load_row(path: str, method: str, command_config) -> tuple:
  """``(config, meta_params, rule)`` of a finished run, with the command's ``dagan`` fields.

  A ``cond_pilot.py`` folder (``pretrain/`` only) gives its pre-trained GAN (``transfer``)
  and the config's own rule; any other folder goes through :func:`metagan_jax.load_run`.
  """
  pre = os.path.join(path, "pretrain", "config.json")
  if not os.path.exists(os.path.join(path, "config.json")) and os.path.exists(pre):
    if method not in ("", "transfer"):
      raise ValueError(f"{path} holds a pre-trained GAN only: method {method!r} is not in it.")
    with open(pre) as f:
      cfg = ml_collections.ConfigDict(json.load(f)["config"])
    cfg = _with_dagan(cfg, command_config)
    like = mg.gan.init(jax.random.key(0), train_lib.pretrain_config(cfg))
    got = train_lib.restore_checkpoint(
      os.path.join(path, "pretrain", "checkpoints"), cfg.train.keep_checkpoints, like
    )
    if got is None:
      raise FileNotFoundError(f"{path}/pretrain/checkpoints has no checkpoint.")
    return cfg, train_lib.pretrained_params(got[0]), train_lib.default_rule(cfg)
  run = mg.load_run(path, method or None)
  cfg = _with_dagan(ml_collections.ConfigDict(run.config), command_config)
  # load_run has applied Meta-SGD's rate multiplier; the sampler must not apply it again
  rule = {k: v for k, v in run.rule.items() if k != "lr_mult"}
  return cfg, run.meta_params, rule


def _with_dagan(cfg, command_config):
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.dagan = ml_collections.ConfigDict(command_config.dagan.to_dict())
  if command_config.data_dir:
    cfg.data_dir = command_config.data_dir
  return cfg


# dagan fields that change no arm trained without the row's samples (real, aug, aug_copies)
_ROW_ONLY = (
  "pool",
  "psi",
  "sample_steps",
  "grid_classes",
  "max_classes",
  "filter",
  "filter_candidates",
)
_BASE = ("real", "aug", "aug_copies")  # arms that do not use the row's samples


def _arms_key(cfg, names, tr, te) -> dict:
  """What the arms without samples depend on: the classifier settings, the classes and
  their very images (a hash: another dataset folder or blur gives other pixels)."""
  key = {k: v for k, v in cfg.dagan.to_dict().items() if k not in _ROW_ONLY}
  key["classes"] = list(names)
  h = hashlib.sha256(np.ascontiguousarray(tr, np.float32).tobytes())
  h.update(np.ascontiguousarray(te, np.float32).tobytes())
  key["images"] = h.hexdigest()[:16]
  return key


def _base_arms(cfg, tr, te, names, workdir: str) -> dict:
  """:data:`_BASE`'s arms, or the copy a previous call in ``workdir`` saved for the same
  classes, images and classifier settings (they do not depend on the rows)."""
  key = _arms_key(cfg, names, tr, te)
  path = os.path.join(workdir, "base_arms.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved["key"] == key and "curve" in saved:
      print(f"arms {', '.join(_BASE)} from {path}")
      return {
        "acc": {a: np.asarray(v) for a, v in saved["acc"].items()},
        "curve": {a: np.asarray(v) for a, v in saved["curve"].items()},
        "curve_steps": saved["curve_steps"],
      }
  arms = [a for a in dagan.arms_of(cfg) if a.name in _BASE]
  got = dagan.train_arms(cfg, tr, te, None, arms, int(cfg.dagan.seed))
  with open(path, "w") as f:
    json.dump({"key": key, **report.jsonable(got)}, f)
  return got


def pool_grid(train_CxK, pool_CxP, n: int = 8) -> np.ndarray:
  """Rows of [K images, blank, n pool images] per class."""
  rows = [np.concatenate([s, -np.ones_like(s[:1]), p[:n]]) for s, p in zip(train_CxK, pool_CxP)]
  return train_lib.image_grid(np.concatenate(rows), cols=train_CxK.shape[1] + 1 + n)


def pool_scores(feat_fn, train_SxCxK, test_SxCxH, pool_SxCxP, unique_SxC=None) -> dict:
  """Class fidelity and diversity of a pool, in the fidelity feature network's space.

  Fidelity: the share of images nearest (in the feature space) to their own class's
  prototype, the mean of its test images; ``fidelity_real`` is the same for the K
  real images. Diversity: mean pairwise distance within a class, over the test
  images'. Means over classes and subsets. ``unique_SxC``: how many of each class's
  pool images are distinct (they come first; a selected pool repeats its accepted
  images), so that repeats count once.
  """
  fid, fid_real, div = [], [], []
  for s, (tr, te, pool) in enumerate(zip(train_SxCxK, test_SxCxH, pool_SxCxP)):
    f_te, f_tr, f_p = feat_fn(te), feat_fn(tr), feat_fn(pool)
    protos = f_te.mean(1)
    for c in range(len(protos)):
      f = f_p[c] if unique_SxC is None else f_p[c][: int(unique_SxC[s][c])]
      fid.append(M.nearest_prototype_accuracy(f, np.full(len(f), c), protos))
      fid_real.append(M.nearest_prototype_accuracy(f_tr[c], np.full(len(f_tr[c]), c), protos))
      ref = max(M.mean_pairwise_distance(f_te[c]), 1e-12)
      div.append(M.mean_pairwise_distance(f) / ref if len(f) > 1 else 0.0)
  fidelity, real = float(np.mean(fid)), float(np.mean(fid_real))
  out = {
    "fidelity": fidelity,
    "fidelity_real": real,
    "fidelity_ratio": fidelity / real if real > 0 else float("nan"),
    "diversity": float(np.mean(div)),
  }
  if unique_SxC is not None:
    out["unique"] = float(np.mean(unique_SxC) / pool_SxCxP.shape[2])
  return out


#: The selection filter's network: twice the fidelity network's widths and embedding, its
#: own seed (trained like it, on the meta-training classes only).
FILTER_WIDTHS = (32, 64, 128)


def filter_net(cfg):
  """The selection filter's embedding: a second feature CNN on the meta-training classes,
  wider and with its own seed, so that the network which scores fidelity does not also
  choose the samples."""
  fcfg = ml_collections.ConfigDict(cfg.to_dict())
  fcfg.features.seed = int(cfg.features.seed) + 1000
  fcfg.features.dim = 2 * int(cfg.features.dim)
  fcfg.features.widths = FILTER_WIDTHS
  return features.feature_net(fcfg, verbose=False)


def select(embed_fn, train_SxCxK, cand_SxCxM, n: int) -> tuple[np.ndarray, np.ndarray, float]:
  """Per subset, :func:`dagan.prototype_filter` then :func:`dagan.select_pool`.

  Returns ``(pool [S, C, n, ...], distinct images per class [S, C], acceptance rate)``.
  """
  pools, unique, rates = [], [], []
  for tr, cand in zip(train_SxCxK, cand_SxCxM):
    f = dagan.prototype_filter(embed_fn, tr, cand)
    pool, u = dagan.select_pool(cand, f["accept"], f["margin"], n, return_unique=True)
    pools.append(pool)
    unique.append(u)
    rates.append(f["rate"])
  return np.stack(pools), np.stack(unique), float(np.mean(rates))


def _pct(v) -> str:
  return f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}" if len(v) > 1 else "-"


def _psi(r: dict) -> str:
  return f" (psi {r['psi']:g})" if r.get("psi", 1.0) != 1.0 else ""


def _pv(p: float) -> str:
  return f"{p:.3f}" if p >= 0.001 else "<0.001"


def markdown(out: dict) -> str:
  """The table of a run of this script (the protocol's arms, or the first protocol's)."""
  if out.get("protocol") != "fair":
    return markdown_first_protocol(out)
  a, dc = out["anchor"], out["config"]["dagan"]
  aug = f"shifts of up to {dc['aug_shift']:g}"
  if dc.get("aug_rotate"):
    aug += f", rotations of up to {dc['aug_rotate']:g} degrees"
  if dc.get("aug_scale"):
    aug += f", scaling by up to {dc['aug_scale']:g}"
  lines = [
    f"Augmentation protocol, {out['split']} classes: {out['classes']} classes, K = {out['k']}, "
    f"{out['subsets']} classifiers ({dc.get('classifier', 'cnn')}) per arm, {out['steps']} steps "
    f"each; augmentation: {aug}; generated share {dc['share']:g} at weight {dc['weight']:g}; "
    f"{dc['pool']} generated images per class and subset. Anchor (amurthy1/dagan_torch, "
    f"K = {a['k']}): {a['real']} -> {a['dagan']} (+{a['gain']}).",
    "",
    "Without samples: "
    + ", ".join(f"{arm} {_pct(v)}" for arm, v in out["base"]["acc"].items())
    + ".",
  ]
  if out["rows"]:
    lines += [
      "",
      "| row | T | real | real + gen | aug | aug + gen | control | real + gen vs real (p) | "
      "aug + gen vs aug (p) | fidelity / real | diversity | accepted |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
  for r in out["rows"]:
    acc, t = r["acc"], r["tests"]
    for suffix, label in (("", ""), ("_filtered", " (filtered)")):
      if "real_gen" + suffix not in acc:
        continue
      t1, t2 = t[f"real_gen{suffix} vs real"], t[f"aug_gen{suffix} vs aug"]
      sc = r["pool" + suffix]
      lines.append(
        f"| {r['name']}{label} | {r['T']}{_psi(r)} | {_pct(acc['real'])} | {_pct(acc['real_gen' + suffix])}"
        f" | {_pct(acc['aug'])} | {_pct(acc['aug_gen' + suffix])} | {_pct(acc['aug_copies'])} | "
        f"{100 * t1['gain']:+.1f} ({_pv(t1['p'])}) | {100 * t2['gain']:+.1f} ({_pv(t2['p'])}) | "
        f"{sc['fidelity_ratio']:.2f} | {sc['diversity']:.2f} | "
        + (f"{100 * sc['acceptance']:.0f}% |" if "acceptance" in sc else "- |")
      )
  conv = out.get("converged", {})
  if conv:
    worst = max(conv.values(), key=lambda c: abs(c["change"]))
    late = [a for a, c in conv.items() if not c["converged"]]
    lines += [
      "",
      f"Doubling the steps from {out['steps'] // 2} to {out['steps']} changes the arms by at "
      f"most {100 * abs(worst['change']):.1f} points "
      + (
        "(converged by the 0.5-point rule)."
        if not late
        else f"(not converged by the 0.5-point rule: {', '.join(late)})."
      ),
    ]
  lines += curve_table(out)
  return "\n".join(lines) + "\n"


def curve_table(out: dict) -> list[str]:
  """Every arm's mean test accuracy at each curve point: the arms without samples, then each
  row's arms with generated images (as markdown lines; none without a curve)."""
  steps = out.get("curve_steps") or []
  curves = {a: c for a, c in out.get("base", {}).get("curve", {}).items()}
  for r in out.get("rows", []):
    for a, c in r.get("curve", {}).items():
      if a not in curves:
        curves[f"{r['name']} T={r['T']}: {a}"] = c
  if len(steps) < 2 or not curves:
    return []
  lines = [
    "",
    "Accuracy (%, mean of the classifiers) against the classifier's steps:",
    "",
    "| arm | " + " | ".join(f"{s:,}" for s in steps) + " |",
    "|---|" + "---|" * len(steps),
  ]
  for a, c in curves.items():
    mean = 100 * np.asarray(c, np.float64).reshape(-1, len(steps)).mean(0)
    lines.append(f"| {a} | " + " | ".join(f"{v:.1f}" for v in mean) + " |")
  return lines


def markdown_first_protocol(out: dict) -> str:
  """The first protocol's table (arms ``gen``, ``jitter``, ``gen_jitter``; research log 31)."""
  a = out["anchor"]
  lines = [
    f"DAGAN protocol, {out['split']} classes: {out['classes']} classes, K = {out['k']}, "
    f"{out['subsets']} classifiers per arm, {out['steps']} steps each, "
    f"{out['config']['dagan']['pool']} generated images per class and subset. Anchor "
    f"(amurthy1/dagan_torch, K = {a['k']}): {a['real']} -> {a['dagan']} (+{a['gain']}).",
    "",
    "| row | T | real | + generated | + jitter | generated on jitter | gain (p) | "
    "on jitter, gain (p) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in out["rows"]:
    acc, t = r["acc"], r["tests"]
    lines.append(
      f"| {r['name']} | {r['T']}{_psi(r)} | {_pct(acc['real'])} | {_pct(acc['gen'])} | "
      f"{_pct(acc['jitter'])} | {_pct(acc['gen_jitter'])} | "
      f"{100 * t['gen-real']['gain']:+.1f} ({_pv(t['gen-real']['p'])}) | "
      f"{100 * t['gen_jitter-jitter']['gain']:+.1f} ({_pv(t['gen_jitter-jitter']['p'])}) |"
    )
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  """Runs the protocol on every row; writes and returns ``dagan.json``'s content."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  dc = config.dagan
  if dc.filter not in ("", "prototype"):
    raise ValueError(f"dagan.filter={dc.filter!r}: use '' (none) or 'prototype'.")
  if config.runs.strip():
    rows = [(n, p, m, *load_row(p, m, config)) for n, p, m in parse_runs(config.runs)]
    cfg0 = rows[0][3]
  else:  # no run: the arms without samples alone (choosing the augmentation and the steps)
    rows, cfg0 = [], _with_dagan(common.base_config(), config)
  cls = dagan.dagan_classes(cfg0, dc.split)
  tr, te = dagan.subsets(cls["images"], int(dc.k), int(dc.subsets), int(dc.split_seed))
  print(f"{len(cls['names'])} {dc.split} classes, K = {dc.k}, {dc.subsets} subsets")
  base = _base_arms(cfg0, tr, te, cls["names"], workdir)
  print("  ".join(f"{a} {100 * v.mean():.1f}" for a, v in base["acc"].items()))
  feat_fn, feat_info = features.feature_net(cfg0, verbose=False) if rows else (None, None)
  embed_fn = filter_net(cfg0)[0] if dc.filter == "prototype" and rows else None
  arms = {a.name: a for a in dagan.arms_of(cfg0)}
  out = {
    "protocol": "fair",
    "split": dc.split,
    "classes": len(cls["names"]),
    "class_names": cls["names"],
    "k": int(dc.k),
    "subsets": int(dc.subsets),
    "steps": int(dc.steps),
    "curve_steps": base["curve_steps"],
    "config": config.to_dict(),
    "anchor": dagan.ANCHOR,
    "feature_net": feat_info,
    "base": {"acc": base["acc"], "curve": base["curve"]},
    "rows": [],
  }
  # rows a previous call in workdir finished (it was killed, or rows were added): kept
  path_json = os.path.join(workdir, "dagan.json")
  done = {}
  if os.path.exists(path_json):
    with open(path_json) as f:
      old_doc = json.load(f)
    if old_doc.get("protocol") == "fair":
      done = {json.dumps(r["key"], sort_keys=True): r for r in old_doc["rows"] if "key" in r}
  arms_key = _arms_key(cfg0, cls["names"], tr, te)
  n_pool = int(dc.pool)
  n_cand = n_pool * (int(dc.filter_candidates) if embed_fn else 1)
  for name, path, method, cfg, params, rule in rows:
    model = train_lib.get_model(cfg)
    if float(dc.psi) > 0:
      rule = dict(rule, psi=float(dc.psi))
    for t in train_lib.parse_list(dc.sample_steps, int):
      if t == 0 and not model.conditional:
        continue
      row_key = dict(
        arms_key,
        name=name,
        path=path,
        method=method,
        T=t,
        pool=n_pool,
        rule=rule,
        filter=dc.filter,
        candidates=n_cand,
        features=cfg0.features.to_dict(),
      )
      old = done.get(json.dumps(report.jsonable(row_key), sort_keys=True))
      if old is not None:
        print(f"{name} T={t}: from {path_json}")
        out["rows"].append(old)
        continue
      ts = time.time()
      cfg_c = ml_collections.ConfigDict(cfg.to_dict())
      cfg_c.dagan.pool = n_cand
      cand = dagan.generated_pools(cfg_c, params, tr, t, jax.random.key(int(dc.seed) + 7), rule)
      g_s = time.time() - ts
      pool = cand[:, :, :n_pool]  # without the filter: the first samples, as they come
      train_lib.save_png(
        os.path.join(workdir, f"{name}_T{t}.png"),
        pool_grid(tr[0, : int(dc.grid_classes)], pool[0, : int(dc.grid_classes)]),
      )
      gen_arms = [arms["real_gen"], arms["aug_gen"]]
      res = dagan.train_arms(cfg, tr, te, pool, gen_arms, int(dc.seed))
      acc = dict(base["acc"], **res["acc"])
      curve = dict(base["curve"], **res["curve"])
      row = {"name": name, "path": path, "method": method or "", "T": t, "generate_s": g_s}
      row["pool"] = pool_scores(feat_fn, tr, te, pool)
      if embed_fn is not None:
        sel, unique, rate = select(embed_fn, tr, cand, n_pool)
        filt = [dataclasses.replace(a, name=a.name + "_filtered") for a in gen_arms]
        res_f = dagan.train_arms(cfg, tr, te, sel, filt, int(dc.seed))
        acc.update(res_f["acc"])
        curve.update(res_f["curve"])
        row["pool_filtered"] = dict(pool_scores(feat_fn, tr, te, sel, unique), acceptance=rate)
        train_lib.save_png(
          os.path.join(workdir, f"{name}_T{t}_filtered.png"),
          pool_grid(tr[0, : int(dc.grid_classes)], sel[0, : int(dc.grid_classes)]),
        )
      tests = dagan.compare(acc)
      for sfx in ("_filtered",) if embed_fn is not None else ():
        tests[f"real_gen{sfx} vs real"] = dagan.ttest(acc["real_gen" + sfx], acc["real"])
        tests[f"aug_gen{sfx} vs aug"] = dagan.ttest(acc["aug_gen" + sfx], acc["aug"])
        tests[f"aug_gen{sfx} vs aug_gen"] = dagan.ttest(acc["aug_gen" + sfx], acc["aug_gen"])
        tests[f"aug_gen{sfx} vs aug_copies"] = dagan.ttest(acc["aug_gen" + sfx], acc["aug_copies"])
      row.update(
        acc={a: v.tolist() for a, v in acc.items()},
        curve={a: np.asarray(v).tolist() for a, v in curve.items()},
        converged=dagan.converged(curve, base["curve_steps"])
        if int(dc.curve_points) % 2 == 0
        else {},
        tests=tests,
        psi=float(rule.get("psi", 1.0)),
        key=row_key,
      )
      out["rows"].append(row)
      with open(path_json, "w") as f:  # after every row: a killed call loses one row at most
        json.dump(report.jsonable(out), f, indent=1)
      t2 = tests["aug_gen vs aug"]
      print(
        f"{name} T={t}: real_gen {100 * acc['real_gen'].mean():.1f} "
        f"({100 * tests['real_gen vs real']['gain']:+.1f} over real), aug_gen "
        f"{100 * acc['aug_gen'].mean():.1f} ({100 * t2['gain']:+.1f} over aug, p {t2['p']:.3g}), "
        f"fidelity {row['pool']['fidelity_ratio']:.2f}x real"
      )
  if int(dc.curve_points) % 2 == 0:  # every arm: those without samples, then the rows'
    out["converged"] = dagan.converged(base["curve"], base["curve_steps"])
    for r in out["rows"]:
      for a, c in r.get("converged", {}).items():
        if a not in base["curve"]:
          out["converged"][f"{r['name']} T={r['T']}: {a}"] = c
  out["seconds"] = time.time() - t0
  with open(path_json, "w") as f:
    json.dump(report.jsonable(out), f, indent=1)
  with open(os.path.join(workdir, "dagan.md"), "w") as f:
    f.write(markdown(out))
  print(markdown(out))
  return out


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
  flags.DEFINE_string("workdir", None, "Output folder.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: run(_CONFIG.value, flags.FLAGS.workdir) and None)
