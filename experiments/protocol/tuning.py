"""Stage 3, tuning: every method picks its test-time rule from the same grid, by its
validation KID on classes of the validation alphabets."""

from __future__ import annotations

import json
import time

import jax
import numpy as np

import metagan_jax as mg
from experiments import train_lib
from experiments.protocol import classes, scoring
from experiments.protocol.features import scaled_features
from metagan_jax import metrics as M


def rule_grid(config, meta_params=None) -> list[dict]:
  """The rules every method is tuned over (``eval.tune_lrs`` x ``eval.tune_g_trainable`` x
  ``eval.tune_d_trainable`` x ``eval.tune_psi``, the sampling truncation).

  For Meta-SGD the learning rates of the grid become multipliers of its learned
  rates (``lr / inner_lr``), so every method gets a grid of the same size.
  """
  ec, base = config.eval, train_lib.default_rule(config)
  lrs = train_lib.parse_list(ec.get("tune_lrs", ""), float) or [base["lr"]]
  gts = [g.strip() for g in str(ec.get("tune_g_trainable", "")).split(";") if g.strip()]
  dts = [d.strip() for d in str(ec.get("tune_d_trainable", "")).split(";") if d.strip()]
  psis = train_lib.parse_list(ec.get("tune_psi", ""), float)
  for psi in psis:
    if not 0.0 <= psi <= 1.0:
      raise ValueError(f"config.eval.tune_psi has {psi}; truncations lie in [0, 1] (1: none).")
  grid = [
    dict(base, lr=lr, g_trainable=g, d_trainable=d, **({"psi": psi} if psis else {}))
    for d in (dts or [base["d_trainable"]])
    for g in (gts or [base["g_trainable"]])
    for lr in lrs
    for psi in (psis or [None])
  ]
  if isinstance(meta_params, mg.MetaSGDParams):
    grid = [dict(r, lr=base["lr"], lr_mult=r["lr"] / base["lr"]) for r in grid]
  return grid


def rule_name(rule: dict) -> str:
  lr = f"x{rule['lr_mult']:g} learned rates" if "lr_mult" in rule else f"lr {rule['lr']:g}"
  psi = f", psi {rule['psi']:g}" if "psi" in rule else ""
  return f"{rule['opt']} {lr}, G: {rule['g_trainable']}, D: {rule['d_trainable']}{psi}"


def tune_rules(config, params_by_run: dict, features_fn, verbose: bool = True) -> dict:
  """The test-time rule of every method: the grid rule with the lowest validation KID.

  Every ``(method, seed)`` adapts with every rule of a grid of the same size
  (:func:`rule_grid`) at T = ``eval.headline``, with the same adaptation noise; a
  method's score for a rule is its mean validation KID over its seeds, and the best
  rule serves all of them. Pooling over seeds keeps one noisy seed from flipping a
  close choice (per-seed choices changed with the CPU: docs/research_log.md).

  Returns ``{"rules": {(method, seed): rule}, "scores": {"method|seed": {rule name:
  KID}}, "method_scores": {method: {rule name: mean KID}}, "classes": [...]}``.
  """
  grid0 = rule_grid(config)
  out = {"rules": {}, "scores": {}, "method_scores": {}, "classes": []}
  if len(grid0) == 1:
    out["rules"] = {run: rule_grid(config, p)[0] for run, p in params_by_run.items()}
    return out
  vc = classes.val_classes(config)
  out["classes"] = vc["names"]
  features_fn = scaled_features(features_fn, vc["heldout"])
  f_held = features_fn(vc["heldout"])
  t = int(config.eval.headline)
  done, grids, secs = {}, {}, {}  # runs sharing one parameter object (transfer of one GAN) run once
  for (method, seed), params in params_by_run.items():
    t0 = time.perf_counter()
    # a method's seeds share one grid: it depends on the config and the parameters' type only
    if method not in grids:
      grids[method] = {rule_name(r): r for r in rule_grid(config, params)}
    if (method, id(params)) not in done:
      # rules that differ only in the truncation share one adaptation
      by_adaptation = {}
      for name, rule in grids[method].items():
        k = json.dumps({f: v for f, v in rule.items() if f != "psi"}, sort_keys=True)
        by_adaptation.setdefault(k, (rule, []))[1].append((name, float(rule.get("psi", 1.0))))
      scores = {}
      for rule, names in by_adaptation.values():
        gens = scoring.adapt_and_generate_psis(
          config,
          params,
          vc["support"],
          [t],
          jax.random.key(20_000),
          config.eval.n_gen,
          rule,
          [psi for _, psi in names],
        )[t]
        for name, psi in names:
          f_gen = features_fn(gens[psi])
          scores[name] = float(np.mean([M.kid(f_gen[c], f_held[c]) for c in range(len(f_gen))]))
      done[(method, id(params))] = {name: scores[name] for name in grids[method]}
    out["scores"][f"{method}|{seed}"] = done[(method, id(params))]
    secs[method] = secs.get(method, 0.0) + time.perf_counter() - t0
  for method, grid in grids.items():
    runs = [r for r in params_by_run if r[0] == method]
    pooled = {n: float(np.mean([out["scores"][f"{m}|{s}"][n] for m, s in runs])) for n in grid}
    best = min(pooled, key=pooled.get)
    out["method_scores"][method] = pooled
    for run in runs:
      out["rules"][run] = grid[best]
    if verbose:
      print(
        f"[tune] {method} ({len(runs)} seed(s)): {best} (mean validation KID x1e3 "
        f"{1e3 * pooled[best]:.3g}; {secs[method]:.1f}s)",
        flush=True,
      )
  return out
