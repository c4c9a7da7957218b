"""Stage 5, statistics: means, bootstrap CIs over seeds and classes, and paired tests."""

from __future__ import annotations

import numpy as np

from experiments import train_lib
from experiments.protocol.scoring import METRICS
from metagan_jax import metrics as M

SECOND_ORDER = ("maml", "metasgd")


def _method_seeds(rows, method) -> list[int]:
  return sorted({r["meta_seed"] for r in rows if r["method"] == method})


def _seed_class_matrix(rows, method, t, metric, C) -> np.ndarray:
  """``[S, C]`` values of one method at one T: meta seeds x classes, mean over adaptation seeds."""
  seeds = _method_seeds(rows, method)
  vals, cnt = np.zeros((len(seeds), C)), np.zeros((len(seeds), C))
  for r in rows:
    if r["method"] == method and r["T"] == t:
      i = seeds.index(r["meta_seed"])
      vals[i, r["cls"]] += r[metric]
      cnt[i, r["cls"]] += 1
  return vals / np.maximum(cnt, 1)


def paired_kid_test(rows, cells: dict, method: str, ref: str, t: int) -> dict:
  """Sign-flip test of ``method``'s KID against ``ref``'s at T = ``t``, paired over classes.

  With the same meta seeds (the same pre-trained GAN and adaptation noise per
  seed) each class's difference is paired within every seed, then averaged over
  the seeds; otherwise it is the difference of the per-class means.
  """
  a, b = cells[(method, t, "kid")], cells[(ref, t, "kid")]
  same_seeds = _method_seeds(rows, method) == _method_seeds(rows, ref)
  diff_C = (a - b).mean(0) if same_seeds else a.mean(0) - b.mean(0)
  return dict(
    M.paired_test(diff_C, np.zeros(len(diff_C))),
    paired="classes (differences within each seed, averaged over seeds)"
    if same_seeds
    else "classes (per-class means)",
  )


def lowdata_gain(acc_SxC, real_C, n_boot: int) -> dict:
  """What generated images add to a low-data classifier: accuracy with them minus without.

  ``acc_SxC``: accuracy with the K real + generated images per meta seed and class;
  ``real_C``: the K-real-only accuracy per class (the same classes and test images;
  the CNN's mean over the adaptation seeds, each of which also seeds the generated
  images' CNN). Returns ``mean`` (points / 100), ``ci`` (seeds and classes resampled),
  ``per_class`` (mean over seeds) and ``p`` (sign-flip test over classes against 0).
  """
  d_SxC = np.asarray(acc_SxC, np.float64) - np.asarray(real_C, np.float64)[None, :]
  per_class = d_SxC.mean(0)
  return {
    "mean": float(d_SxC.mean()),
    "ci": M.hierarchical_bootstrap_ci(d_SxC, n_boot),
    "per_class": per_class.tolist(),
    "p": M.paired_test(per_class, np.zeros_like(per_class))["p"],
  }


def summarise(config, res: dict) -> dict:
  """Means, 95% bootstrap CIs over seeds and classes, and paired tests against ``transfer``.

  ``metrics["<method>|<T>|<metric>"]`` holds ``mean``, ``ci`` (meta seeds and
  classes resampled), ``per_class`` (mean over seeds) and ``per_seed``;
  ``vs_transfer["<method>|<T>"]`` the paired sign-flip test of KID against
  ``transfer`` over classes: when both have the same meta seeds (the same
  pre-trained GAN and adaptation noise per seed), each class's difference is
  first paired within every seed and averaged over the seeds; otherwise it is
  the difference of the per-class means. Classes are the exchangeable unit
  (cells of one seed share a meta-trained model, so they are not independent).
  ``vs_reptile["<method>|<T>"]``: the same test of every other meta method
  (equal-time rows included) against ``reptile``. ``best_method``: the meta
  method with the lowest KID at T = ``eval.headline``; ``best_second_order``:
  the same among MAML and Meta-SGD rows. ``lowdata_gain["<method>|<T>"]`` and
  ``lowdata_cnn_gain[...]`` (T = ``eval.headline``): :func:`lowdata_gain` of the linear
  probe and of the anchors' CNN, each against its K-real-only baseline.
  """
  ec = config.eval
  steps = train_lib.parse_list(ec.steps, int)
  C = len(res["classes"])
  methods = list(dict.fromkeys(r["method"] for r in res["per_class"]))
  out = {
    "methods": methods,
    "steps": steps,
    "metrics": {},
    "fd": {},
    "vs_transfer": {},
    "vs_reptile": {},
  }
  cells = {}
  for m in methods:
    for t in steps:
      rows_mt = [r for r in res["per_class"] if r["method"] == m and r["T"] == t]
      # a metric computed at some T only (the CNN's, at the headline) is left out elsewhere
      for metric in (k for k in METRICS if all(k in r for r in rows_mt)):
        v = _seed_class_matrix(res["per_class"], m, t, metric, C)
        cells[(m, t, metric)] = v
        out["metrics"][f"{m}|{t}|{metric}"] = {
          "mean": float(v.mean()),
          "ci": M.hierarchical_bootstrap_ci(v, ec.n_boot),
          "per_class": v.mean(0).tolist(),
          "per_seed": v.mean(1).tolist(),
        }
      runs = [f for f in res["fd"] if f["method"] == m and f["T"] == t]
      out["fd"][f"{m}|{t}"] = {"mean": float(np.mean([f["fd"] for f in runs]))}
      if t == ec.headline and all("feats" in f for f in runs):
        f_held = res["f_held"]

        def fd_stat(cls_idx, runs=runs):
          return np.mean(
            [
              M.frechet_distance(
                f["feats"][cls_idx].reshape(-1, f_held.shape[-1]),
                f_held[cls_idx].reshape(-1, f_held.shape[-1]),
              )
              for f in runs
            ]
          )

        out["fd"][f"{m}|{t}"]["ci"] = M.bootstrap_ci(
          np.arange(C), min(ec.n_boot, 200), statistic=fd_stat
        )
  for name, metric in (("lowdata", "lowdata_acc"), ("lowdata_cnn", "lowdata_cnn_acc")):
    if not res.get(f"{name}_real"):  # the CNN's, only in runs with that metric
      continue
    real = np.mean([v for v in res[f"{name}_real"].values()], axis=0)
    out[f"{name}_real"] = {"mean": float(real.mean()), "ci": M.bootstrap_ci(real, ec.n_boot)}
    out[f"{name}_gain"] = {
      f"{m}|{ec.headline}": lowdata_gain(cells[(m, ec.headline, metric)], real, ec.n_boot)
      for m in methods
      if (m, ec.headline, metric) in cells
    }
  if "transfer" in methods:
    out["vs_transfer"] = {
      f"{m}|{t}": paired_kid_test(res["per_class"], cells, m, "transfer", t)
      for m in methods
      if m != "transfer"
      for t in steps
    }
  if "reptile" in methods:  # every other meta method (and its equal-time row) against Reptile
    out["vs_reptile"] = {
      f"{m}|{t}": paired_kid_test(res["per_class"], cells, m, "reptile", t)
      for m in methods
      if m != "reptile" and train_lib.base_method(m) in train_lib.META_METHODS
      for t in steps
    }
  meta = [m for m in methods if train_lib.base_method(m) in train_lib.META_METHODS]
  if meta:
    kid = lambda m: out["metrics"][f"{m}|{ec.headline}|kid"]["mean"]
    out["best_method"] = min(meta, key=kid)
    second = [m for m in meta if train_lib.base_method(m) in SECOND_ORDER]
    if second:
      out["best_second_order"] = min(second, key=kid)
  return out


def across_runs(summary_a: dict, cell_a: str, summary_b: dict, cell_b: str) -> dict:
  """A metric of one run against another's on the same test classes, paired over classes.

  ``summary_*``: a run's ``eval/summary.json`` (its ``"summary"``); ``cell_*``:
  ``"<method>|<T>|<metric>"``, e.g. ``"transfer|0|kid"`` against ``"reptile|10|kid"`` (the
  per-class means over each run's seeds; the runs' seeds are not paired). Returns
  :func:`metagan_jax.metrics.paired_test` of a minus b (sign-flip test over classes).

  Raises:
    ValueError: a cell that is not in its summary, or runs of different class counts.
  """
  vals = []
  for s, cell in ((summary_a, cell_a), (summary_b, cell_b)):
    m = s.get("summary", s)["metrics"]
    if cell not in m:
      raise ValueError(f"cell {cell!r} is not in the summary; it has e.g. {sorted(m)[:4]}.")
    vals.append(np.asarray(m[cell]["per_class"], np.float64))
  if vals[0].shape != vals[1].shape:
    raise ValueError(f"the runs have {vals[0].size} and {vals[1].size} classes: not paired.")
  return M.paired_test(vals[0], vals[1])
