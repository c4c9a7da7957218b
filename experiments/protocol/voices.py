"""The voices protocol: adapt to a speaker never heard in training, and score what a listener hears.

See docs/explanation/protocol.md ("The voices protocol"). Per fold (one test
speaker, one validation speaker, four meta-training speakers):

1. ``fold_classes``: the test (or validation) speaker's ten (speaker, digit)
   classes; per class K support clips drawn from recordings 25-49, the rest
   held out; other speakers' held-out clips of the same digit for the
   verification trials.
2. ``tune_rules``: each method's test-time rule (the grid of the Omniglot
   protocol) chosen on the validation speaker by mean voice-similarity margin.
3. ``evaluate_fold``: rows for real held-out clips, their round trip through the
   representation, a copy baseline (the support shifted in time and slightly in
   pitch) and every trained run adapted for T in ``eval.steps``. Every clip is
   a waveform (generated spectrograms go through Griffin-Lim) scored by the
   oracles (``oracles.py``).
4. ``summarise``: per fold and pooled over folds: means, bootstrap CIs, EER per
   fold, and sign-flip tests paired over (fold, class).
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

import metagan_jax as mg
from experiments import train_lib
from experiments.protocol import oracles as oracles_lib
from experiments.protocol import scoring
from experiments.protocol.tuning import rule_grid, rule_name
from metagan_jax import metrics as M

#: Per-class metrics of every row (higher is better except KID and EER).
VOICE_METRICS = (
  "voice_fidelity",
  "digit_fidelity",
  "voice_margin",
  "kid",
  "diversity",
  "memorisation",
)


@functools.cache
def _raw_clips(dataset: str, data_dir: str, spec: mg.audio.SpecConfig) -> mg.data.ClassDataset:
  return mg.data.audio.load_recordings(dataset, data_dir or None, spec=spec, verbose=False)


def raw_clips(config) -> mg.data.ClassDataset:
  """Every class's raw clips ``[50, num_samples]`` (read once per process)."""
  return _raw_clips(config.dataset, config.data_dir or "", train_lib.spec_config(config))


def fold_spectrogram(config) -> mg.audio.Spectrogram:
  """The fold's representation: moments of its four meta-training speakers' clips only.

  The same numbers as the ``spectrogram`` of ``train_lib.load_split(config, ...)``.
  """
  raw = raw_clips(config)
  by = mg.data.fold_split(raw, int(config.fold))
  spec = train_lib.spec_config(config)
  return mg.audio.Spectrogram(spec, mg.data.audio.fit_stats(raw.select(by["train"]), spec))


def fold_classes(config, split: str = "test") -> dict:
  """The fold's ``split`` speaker's classes, supports and held-out clips.

  Support clips of class ``c`` are K of recordings 25-49 drawn with
  ``default_rng([eval.split_seed, fold, c])``; the rest are held out. The non-target
  speakers of its verification trials are all the others, except that the validation
  speaker's never include the fold's test speaker.

  Returns:
    ``{"names", "speaker", "digits", "support_wave" [C, K, L], "heldout_wave"
    [C, H, L], "support" [C, K, n_mels, frames, 1] (model inputs),
    "others": {digit: [other speakers' held-out clips [H', L]]}, "other_speakers": {digit:
    [their names]}, "spectrogram",
    "indices": {name: {"support": [...], "heldout": [...]}}}``.
  """
  raw = raw_clips(config)
  by = mg.data.fold_split(raw, int(config.fold))
  names = by[split]
  speakers = sorted(set(raw.groups))
  k = int(config.eval.k)
  ev = np.arange(oracles_lib.EVAL_RECORDINGS.start, oracles_lib.EVAL_RECORDINGS.stop)
  sup, held, idx = [], [], {}
  for c, name in enumerate(names):
    rng = np.random.default_rng([int(config.eval.split_seed), int(config.fold), c])
    s = np.sort(rng.choice(ev, k, replace=False))
    h = np.setdiff1d(ev, s)
    x = raw.images[raw.names.index(name)]
    sup.append(x[s])
    held.append(x[h])
    idx[name] = {"support": s.tolist(), "heldout": h.tolist()}
  speaker = raw.groups[raw.names.index(names[0])]
  digits = [n.split("/")[-1] for n in names]
  # The non-target speakers of the verification trials: every other speaker, except that the
  # validation speaker's trials (which choose rules and the headline method) never use the
  # fold's test speaker, whose recordings 25-49 are its supports and held-out clips.
  test_speaker = raw.groups[raw.names.index(by["test"][0])]
  excluded = {speaker} | ({test_speaker} if split != "test" else set())
  other_speakers = {
    d: [o for o in speakers if o not in excluded and f"{o}/{d}" in raw.names] for d in digits
  }
  others = {
    d: [raw.images[raw.names.index(f"{o}/{d}")][ev] for o in other_speakers[d]] for d in digits
  }
  spectrogram = fold_spectrogram(config)
  sup = np.stack(sup)
  return {
    "names": names,
    "speaker": speaker,
    "digits": digits,
    "support_wave": sup,
    "heldout_wave": np.stack(held),
    "support": spectrogram.encode(sup.reshape(-1, sup.shape[-1])).reshape(
      *sup.shape[:2], *spectrogram.spec.image_shape
    ),
    "others": others,
    "other_speakers": other_speakers,
    "spectrogram": spectrogram,
    "indices": idx,
  }


def copy_clips(support_CxKxL: np.ndarray, n: int, seed: int, sample_rate: int) -> np.ndarray:
  """The copy baseline: the K support clips cycled to ``n`` per class, each shifted.

  Each copy starts up to 50 ms later (silence in front) and is resampled by a
  factor in [2^(-1/12), 2^(1/12)] (up to a semitone higher or lower, and that
  much shorter or longer), the cheapest new recordings one can make of four.
  """
  rng = np.random.default_rng(seed)
  C, K, L = support_CxKxL.shape
  out = np.zeros((C, n, L), np.float32)
  for c in range(C):
    for i in range(n):
      w = support_CxKxL[c, i % K]
      r = 2.0 ** (rng.uniform(-1, 1) / 12)
      pitched = np.interp(np.arange(0, L, r), np.arange(L), w).astype(np.float32)
      delay = int(rng.integers(0, int(0.05 * sample_rate) + 1))
      x = np.concatenate([np.zeros(delay, np.float32), pitched])[:L]
      out[c, i, : len(x)] = x
  return out


def _scores(orc, waves_CxNxL, cls: dict, exclude_self: bool) -> tuple[dict, list, list]:
  """Per-class metrics of one row's clips, and its verification trials (target, non-target)."""
  C, N = waves_CxNxL.shape[:2]
  flat = waves_CxNxL.reshape(C * N, -1)
  e_gen = orc.embed(flat).reshape(C, N, -1)
  spk = orc.speaker_logits(flat).argmax(-1).reshape(C, N)
  dig = orc.digit_logits(flat).argmax(-1).reshape(C, N)
  held = cls["heldout_wave"]
  H = held.shape[1]
  e_held = orc.embed(held.reshape(C * H, -1)).reshape(C, H, -1)
  K = cls["support_wave"].shape[1]
  e_sup = orc.embed(cls["support_wave"].reshape(C * K, -1)).reshape(C, K, -1)
  # One constant for the fold: the held-out clips' embeddings get unit mean square, so the
  # cubic KID kernel sees O(1) inner products (cosines and distance ratios do not change).
  scale = float(np.sqrt(np.mean(e_held**2))) or 1.0
  e_gen, e_held, e_sup = e_gen / scale, e_held / scale, e_sup / scale
  per = {m: np.zeros(C) for m in VOICE_METRICS}
  targets, nontargets = [], []
  s_idx = orc.speakers.index(cls["speaker"])
  # the other speakers' clips of each digit, embedded once per fold (every row uses them)
  others = cls.setdefault("_embedded_others", {})
  for c in range(C):
    d = cls["digits"][c]
    if (id(orc), d) not in others:
      others[(id(orc), d)] = [orc.embed(o) for o in cls["others"][d]]
    e_oth = others[(id(orc), d)]
    sim_t = M.cosine_similarity(e_gen[c], e_held[c])
    if exclude_self:  # trial i is held-out clip i (or its round trip): not its own reference
      mask = ~np.eye(N, H, dtype=bool)
      t = np.array([sim_t[i][mask[i]].mean() for i in range(N)])
    else:
      t = sim_t.mean(axis=1)
    nt = np.stack([M.cosine_similarity(e_gen[c], o).mean(axis=1) for o in e_oth], axis=1)
    targets.append(t)
    nontargets.append(nt.ravel())
    per["voice_fidelity"][c] = np.mean(spk[c] == s_idx)
    per["digit_fidelity"][c] = np.mean(dig[c] == orc.digits.index(d))
    per["voice_margin"][c] = float(t.mean() - nt.mean())
    if exclude_self:  # the real row: one half of the held-out clips against the other,
      # interleaved (even against odd recordings: FSDD's speakers recorded in sessions)
      per["kid"][c] = M.kid(e_gen[c][0::2], e_held[c][1::2])
    else:
      per["kid"][c] = M.kid(e_gen[c], e_held[c])
    per["diversity"][c] = scoring._ratio(  # pylint: disable=protected-access
      M.mean_pairwise_distance(e_gen[c]), M.mean_pairwise_distance(e_held[c])
    )
    # distance to the nearest support clip over the distance to the nearest of K held-out
    # clips; the real and round-trip rows score their clips K.. only, against clips ..K
    # (clip i is held-out clip i, or its round trip: it must not be its own neighbour)
    trials = e_gen[c][K:] if exclude_self else e_gen[c]
    per["memorisation"][c] = scoring._ratio(  # pylint: disable=protected-access
      M.nearest_neighbour_distance(trials, e_sup[c]).mean(),
      M.nearest_neighbour_distance(trials, e_held[c][:K]).mean(),
    )
  return per, targets, nontargets


def _row(orc, waves, cls, exclude_self=False) -> dict:
  per, t, nt = _scores(orc, waves, cls, exclude_self)
  eer, _ = M.equal_error_rate(np.concatenate(t), np.concatenate(nt))
  return {"per_class": per, "eer": eer, "target": t, "nontarget": nt}


def generate_clips(config, params, cls: dict, t: int, key, rule: dict | None) -> dict:
  """Adapted samples as spectrograms ``[C, n, M, T, 1]`` and as clips ``[C, n, L]``."""
  n = int(config.eval.n_gen)
  psi = float((rule or {}).get("psi", 1.0))
  specs = scoring.adapt_and_generate_psis(config, params, cls["support"], [t], key, n, rule, [psi])[
    t
  ][psi]
  C = specs.shape[0]
  waves = cls["spectrogram"].decode(
    specs.reshape(C * n, *specs.shape[2:]), iters=int(config.oracles.gl_iters)
  )
  return {"specs": specs, "waves": waves.reshape(C, n, -1)}


def tune_rules(config, params_by_run: dict, orc, verbose: bool = True) -> dict:
  """Each method's test-time rule: the grid rule with the highest mean voice margin on the
  fold's validation speaker (pooled over the method's seeds), at T = ``eval.headline``.

  Returns ``{"rules": {(method, seed): rule}, "method_scores": {method: {rule: margin}}}``.
  """
  t = int(config.eval.headline)
  out = {"rules": {}, "method_scores": {}, "scores": {}}
  grid0 = rule_grid(config)
  if len(grid0) == 1:
    out["rules"] = {run: rule_grid(config, p)[0] for run, p in params_by_run.items()}
    return out
  vc = fold_classes(config, "val")
  done, grids = {}, {}
  for (method, seed), params in params_by_run.items():
    t0 = time.perf_counter()
    grids.setdefault(method, {rule_name(r): r for r in rule_grid(config, params)})
    if id(params) not in done:
      scores = {}
      for name, rule in grids[method].items():
        gen = generate_clips(config, params, vc, t, jax.random.key(20_000), rule)
        per, _, _ = _scores(orc, gen["waves"], vc, False)
        scores[name] = float(per["voice_margin"].mean())
      done[id(params)] = scores
    out["scores"][f"{method}|{seed}"] = done[id(params)]
    if verbose:
      print(f"[tune] {method} seed {seed}: {time.perf_counter() - t0:.1f}s", flush=True)
  for method, grid in grids.items():
    runs = [r for r in params_by_run if r[0] == method]
    pooled = {n: float(np.mean([out["scores"][f"{m}|{s}"][n] for m, s in runs])) for n in grid}
    best = max(pooled, key=pooled.get)
    out["method_scores"][method] = pooled
    for run in runs:
      out["rules"][run] = grid[best]
    if verbose:
      print(
        f"[tune] fold {config.fold} {method}: {best} (validation voice margin {pooled[best]:.3f})",
        flush=True,
      )
  return out


def evaluate_fold(config, params_by_run: dict, orc, rules: dict, verbose: bool = True) -> dict:
  """Every row of one fold: real, round trip, copy, and each run at each T of ``eval.steps``.

  The rows score the fold's test speaker (``eval.split = "val"``: its validation speaker,
  for pilots that must not read a test speaker).

  Returns ``{"rows": {row name: {"per_class", "eer", ...}}, "classes", "speaker",
  "samples": {row: clips [C, n, L]}, "specs": {row: [C, n, M, T, 1]}, "cls"}``.
  """
  cls = fold_classes(config, str(config.eval.get("split", "test") or "test"))
  spg = cls["spectrogram"]
  iters = int(config.oracles.gl_iters)
  held = cls["heldout_wave"]
  C, H, L = held.shape
  rows, samples, specs = {}, {}, {}
  t0 = time.perf_counter()
  rows["real"] = _row(orc, held, cls, exclude_self=True)
  rt = spg.decode(spg.encode(held.reshape(C * H, L)), iters=iters).reshape(C, H, L)
  rows["roundtrip"] = _row(orc, rt, cls, exclude_self=True)
  n = int(config.eval.n_gen)
  copies = copy_clips(cls["support_wave"], n, int(config.fold), spg.spec.sample_rate)
  rows["copy"] = _row(orc, copies, cls)
  samples["roundtrip"], samples["copy"] = rt, copies
  steps = sorted(set(train_lib.parse_list(config.eval.steps, int)) | {int(config.eval.headline)})
  for (method, seed), params in params_by_run.items():
    for t in steps:
      gen = generate_clips(
        config, params, cls, t, jax.random.key(1000 * seed + 7), rules[(method, seed)]
      )
      name = f"{method}|{seed}|{t}"
      rows[name] = _row(orc, gen["waves"], cls)
      samples[name], specs[name] = gen["waves"], gen["specs"]
  if verbose:
    print(
      f"[eval] fold {config.fold} ({config.eval.get('split', 'test') or 'test'} speaker "
      f"{cls['speaker']}): {len(rows)} rows in "
      f"{time.perf_counter() - t0:.0f}s",
      flush=True,
    )
  return {
    "fold": int(config.fold),
    "rows": rows,
    "classes": cls["names"],
    "speaker": cls["speaker"],
    "samples": samples,
    "specs": specs,
    "cls": cls,
  }


def _row_key(name: str) -> tuple[str, int | None, int | None]:
  parts = name.split("|")
  return (parts[0], int(parts[1]), int(parts[2])) if len(parts) == 3 else (name, None, None)


def summarise(config, folds: dict, reference: str = "transfer") -> dict:
  """Pooled over folds: per (method, T) the mean of every metric with a bootstrap CI over
  (fold, class) units, EER pooled per fold (mean over folds, and over all trials), and
  sign-flip tests against ``reference`` paired over (fold, class).

  Args:
    folds: ``{fold: evaluate_fold(...)}``.

  Returns:
    ``{"cells": {"method|T": {metric: {"mean", "ci", "per_fold"}, "eer": ...,
    "vs_<reference>": {metric: paired test}}}, "folds": {fold: speaker}}``.
  """
  n_boot = int(config.eval.n_boot)
  groups: dict[tuple[str, int | None], dict] = {}
  for f, res in sorted(folds.items()):
    for name, row in res["rows"].items():
      method, seed, t = _row_key(name)
      g = groups.setdefault((method, t), {})
      g.setdefault(f, []).append(row)
  cells = {}
  for (method, t), by_fold in groups.items():
    key = method if t is None else f"{method}|{t}"
    cell = {}
    for m in VOICE_METRICS:
      # per (fold, class): the mean over the method's seeds
      units = np.concatenate(
        [np.mean([r["per_class"][m] for r in rows], axis=0) for _, rows in sorted(by_fold.items())]
      )
      ci = M.bootstrap_ci(units, n_boot=n_boot) if len(units) > 1 else (np.nan, np.nan)
      cell[m] = {
        "mean": float(np.nanmean(units)),
        "ci": [float(ci[0]), float(ci[1])],
        "per_fold": {
          str(f): float(np.mean([r["per_class"][m].mean() for r in rows]))
          for f, rows in sorted(by_fold.items())
        },
        "units": units.tolist(),
      }
    eer_f = {
      str(f): float(np.mean([r["eer"] for r in rows])) for f, rows in sorted(by_fold.items())
    }
    pooled_t = np.concatenate(
      [np.concatenate(r["target"]) for rows in by_fold.values() for r in rows]
    )
    pooled_n = np.concatenate(
      [np.concatenate(r["nontarget"]) for rows in by_fold.values() for r in rows]
    )
    cell["eer"] = {
      "mean": float(np.mean(list(eer_f.values()))),
      "per_fold": eer_f,
      "pooled_trials": M.equal_error_rate(pooled_t, pooled_n)[0],
    }
    cells[key] = cell
  for key, cell in cells.items():
    if "|" not in key:  # real, round trip, copy: no paired test
      continue
    ref = f"{reference}|{key.split('|')[1]}"
    if ref in cells and ref != key:
      cell[f"vs_{reference}"] = {
        m: M.paired_test(cell[m]["units"], cells[ref][m]["units"]) for m in VOICE_METRICS
      }
  return {
    "cells": cells,
    "folds": {str(f): res["speaker"] for f, res in sorted(folds.items())},
    "reference": reference,
  }
