"""Stage 6, tables and figures: the results table, adaptation curves, sample grids and
the README's picture, and ``jsonable`` for results.json."""

from __future__ import annotations

import os

import numpy as np

from experiments import train_lib


def jsonable(x):
  """``x`` with numpy arrays and scalars turned into lists and Python numbers (for json.dump)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, np.floating, np.integer)):
    return np.asarray(x).tolist()
  return x


def _fmt(d, scale=1.0, digits=2):
  lo, hi = d["ci"]
  f = lambda x: f"{x * scale:.{digits}f}" if digits else f"{x * scale:.3g}"
  return f"{f(d['mean'])} [{f(lo)}, {f(hi)}]"


_NAMES = {"copy": "copy (jittered support)", "real": "real (held-out images)"}


def _name(m: str, ref: str = "reptile") -> str:
  if m.endswith(train_lib.EQUAL_TIME):
    return f"{train_lib.base_method(m)} at {ref}'s time ({m})"
  return _NAMES.get(m, m)


def _order(methods: list[str]) -> list[str]:
  """Reference rows first (real, copy), then the others in the order given."""
  return [m for m in ("real", "copy") if m in methods] + [
    m for m in methods if m not in ("real", "copy")
  ]


def _k_note(timing: dict) -> str:
  """The footer's note on a run's equal-time step k, if it has one."""
  if not timing.get("equal_time_steps"):
    return ""
  note = f", {timing['equal_time_steps']} steps at {timing['of']}'s time"
  if timing.get("equal_time_probe_ms"):
    note += f", the first {train_lib.PROBE_STEPS} timed at {timing['equal_time_probe_ms']:.0f} ms"
  return note


def _gains(s: dict, t: int) -> str:
  """The footer's low-data gains in points ("" for runs from before them)."""
  parts = []
  for label, key in (("linear probe", "lowdata_gain"), ("CNN", "lowdata_cnn_gain")):
    if key not in s:
      continue
    cells = []
    for m in _order([k.split("|")[0] for k in s[key]]):
      v = s[key][f"{m}|{t}"]
      cells.append(
        f"{m} {100 * v['mean']:+.1f} [{100 * v['ci'][0]:+.1f}, "
        f"{100 * v['ci'][1]:+.1f}], p={v['p']:.3f}"
      )
    parts.append(f"{label}: " + ", ".join(cells))
  return "; ".join(parts)


def markdown_table(config, summary: dict, info: dict) -> str:
  """The headline results table (T = eval.headline) and KID against T."""
  ec = config.eval
  t = ec.headline
  s = summary
  cnn = "lowdata_cnn_real" in s  # runs before the CNN metric have no such column
  lines = [
    f"**Adaptation to {info['num_test_classes']} unseen Omniglot classes, K = {ec.k}, "
    f"T = {t} steps** ({info['seeds']})",
    "",
    "| method | KID x1e3 (lower better) | FD pooled | class fidelity | diversity gen/real "
    "| memorisation NN ratio | low-data acc (K real + gen)"
    + (" | low-data CNN acc (K real + gen)" if cnn else "")
    + " | KID vs transfer: diff x1e3, p | KID vs reptile: diff x1e3, p |",
    "|---|---|---|---|---|---|---|---|---|" + ("---|" if cnn else ""),
  ]
  ref_name = config.train.get("equal_time_of", "reptile")
  for m in _order(s["methods"]):
    g = lambda metric: s["metrics"][f"{m}|{t}|{metric}"]
    fd = s["fd"][f"{m}|{t}"]
    fd_s = (
      f"{fd['mean']:.3g} [{fd['ci'][0]:.3g}, {fd['ci'][1]:.3g}]"
      if "ci" in fd
      else f"{fd['mean']:.3g}"
    )
    vs = []
    for ref in ("transfer", "reptile"):
      v = s.get(f"vs_{ref}", {}).get(f"{m}|{t}")
      vs.append(
        f"{v['mean_diff'] * 1e3:+.3g}, p={v['p']:.3f}"
        if v
        else "(reference)"
        if m == ref and f"vs_{ref}" in s and s[f"vs_{ref}"]
        else ""
      )
    lines.append(
      f"| {_name(m, ref_name)} | {_fmt(g('kid'), 1e3, 0)} | {fd_s} | "
      f"{_fmt(g('fidelity'))} | {_fmt(g('diversity'))} | {_fmt(g('memorisation'))} | "
      f"{_fmt(g('lowdata_acc'))} | "
      + (f"{_fmt(g('lowdata_cnn_acc'))} | " if cnn else "")
      + f"{vs[0]} | {vs[1]} |"
    )
  lines.append(
    f"| K real images only | | | | | | {_fmt(s['lowdata_real'])} | "
    + (f"{_fmt(s['lowdata_cnn_real'])} | " if cnn else "")
    + "| |"
  )
  lines += [
    "",
    f"**KID x1e3 against adaptation steps T** ({info['seeds']})",
    "",
    "| method | " + " | ".join(f"T={x}" for x in s["steps"]) + " |",
    "|---|" + "---|" * len(s["steps"]),
  ]
  for m in _order(s["methods"]):
    if m in ("real", "copy"):
      continue  # the same at every T
    lines.append(
      f"| {m} | "
      + " | ".join(_fmt(s["metrics"][f"{m}|{x}|kid"], 1e3, 0) for x in s["steps"])
      + " |"
    )
  fn = info["featnet"]
  lines += [
    "",
    f"Feature network: {fn['num_classes']}-way CNN on meta-training classes only, "
    f"held-out accuracy {fn['heldout_acc']:.3f} on those classes; on the "
    f"{info['num_test_classes']} test classes its nearest-prototype accuracy on real "
    f"held-out images (the `real` row's fidelity) is "
    f"{s['metrics'][f'real|{t}|fidelity']['mean']:.3f}. {info['training']}",
  ]
  gains = _gains(s, t)
  if gains:
    lines += [
      "",
      f"Low-data gain at T = {t} (accuracy with the generated images minus K real "
      "images only, points; mean [95% CI over seeds and classes], sign-flip p over "
      f"classes): {gains}.",
    ]
  if info.get("health"):
    h = info["health"]
    lines += [
      "",
      f"Training health: {h['nonfinite_skipped']} non-finite updates skipped over "
      f"{h['runs']} training runs; largest |loss| logged {h['max_abs_loss']:.3g}.",
    ]
  if info.get("train_seconds"):
    lines += [
      "",
      "Training time per run, seconds (meta-training loop, compile included; "
      "median ms per meta-step in brackets): "
      + "; ".join(
        f"{run}: {v['loop_s']:.0f} s ({v['median_step_ms']:.0f} ms{_k_note(v)})"
        for run, v in info["train_seconds"].items()
      )
      + ".",
    ]
  if info.get("rules"):
    lines += [
      "",
      "Test-time rules (tuned on validation alphabets): "
      + "; ".join(f"{run}: {rule}" for run, rule in info["rules"].items())
      + ".",
    ]
  return "\n".join(lines)


def plot_curves(summary: dict, path: str) -> None:
  """Adaptation curves: KID and class fidelity against T, one line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  steps = summary["steps"]
  for ax, metric, scale, label in (
    (axes[0], "kid", 1e3, "KID x1e3 (lower is better)"),
    (axes[1], "fidelity", 1, "class fidelity (higher is better)"),
  ):
    for m in summary["methods"]:
      d = [summary["metrics"][f"{m}|{t}|{metric}"] for t in steps]
      mean = np.array([x["mean"] for x in d]) * scale
      lo = np.array([x["ci"][0] for x in d]) * scale
      hi = np.array([x["ci"][1] for x in d]) * scale
      style = {"copy": dict(ls="--", color="gray"), "real": dict(ls=":", color="black")}.get(
        m, dict(marker="o", ms=3)
      )
      ax.plot(steps, mean, label=m, **style)
      if m not in ("copy", "real"):
        ax.fill_between(steps, lo, hi, alpha=0.15)
    ax.set_xlabel("adaptation steps T")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  # KID spans orders of magnitude between methods (and can be slightly negative:
  # it is unbiased), so a symmetric log axis keeps every line readable.
  axes[0].set_yscale("symlog", linthresh=100.0)  # linear within +-100: the real row sits at ~0
  axes[1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sample_grid(
  support, images: dict, t_cols: tuple[int, int], n_classes: int, n_samples: int = 6
) -> np.ndarray:
  """One image: per class a row ``support | samples at T0 | samples at T1`` in [0, 1]."""
  C, K, H, W, _ = support.shape
  n_classes = min(n_classes, C)
  gap = np.ones((H, W // 2))
  rows = []
  for c in range(n_classes):
    parts = [np.concatenate(list(support[c, :, :, :, 0]), axis=1), gap]
    for t in t_cols:
      parts += [np.concatenate(list(images[t][c, :n_samples, :, :, 0]), axis=1), gap]
    rows.append(np.concatenate(parts[:-1], axis=1))
  return np.clip((np.stack(rows).reshape(-1, rows[0].shape[1]) + 1) / 2, 0, 1)


def headline_picture(
  config, res: dict, summary: dict, path: str, n_classes: int = 8, n_samples: int = 6
) -> str | None:
  """The README's picture: per unseen class, support | best meta method | Reptile | best
  second-order method | transfer (T = headline), each column once."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  best, t = summary.get("best_method"), config.eval.headline
  cols = [
    m
    for m in dict.fromkeys((best, "reptile", summary.get("best_second_order"), "transfer"))
    if m in res["images"]
  ]
  if not cols:
    return None
  sup = res["support"]
  n_classes = min(n_classes, sup.shape[0])
  blocks = [[sup[c, :, :, :, 0] for c in range(n_classes)]]
  blocks += [[res["images"][m][t][c, :n_samples, :, :, 0] for c in range(n_classes)] for m in cols]
  h, w = sup.shape[2:4]
  gap = np.ones((h, w // 2))
  rows = [
    np.concatenate(
      sum(([np.concatenate(list(b[c]), axis=1), gap] for b in blocks), [])[:-1], axis=1
    )
    for c in range(n_classes)
  ]
  img = np.clip((np.concatenate(rows, axis=0) + 1) / 2, 0, 1)
  fig, ax = plt.subplots(figsize=(img.shape[1] / 40, img.shape[0] / 40 + 0.5))
  ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  x, titles = 0, [f"support (K={sup.shape[1]})"] + [f"{m}, T={t}" for m in cols]
  for b, title in zip(blocks, titles):
    width = b[0].shape[0] * w
    ax.text(x + width / 2, -4, title, ha="center", va="bottom", fontsize=9)
    x += width + w // 2
  ax.axis("off")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def save_grids(config, res: dict, fig_dir: str) -> list[str]:
  """A sample grid per method (support | T = 0 | T = headline) and one with all methods."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  t_cols = (
    (0, config.eval.headline)
    if 0 in res["images"].get("copy", {})
    else (config.eval.headline, config.eval.headline)
  )
  paths, grids = [], {}
  for m, imgs in res["images"].items():
    g = sample_grid(
      res["support"] if m != "copy" else res["support"], imgs, t_cols, config.eval.grid_classes
    )
    grids[m] = g
    p = os.path.join(fig_dir, f"samples_{m}.png")
    train_lib.save_png(p, g)
    paths.append(p)
  ms = [m for m in res["images"] if m != "copy"]
  if ms:
    h, w = grids[ms[0]].shape
    fig, axes = plt.subplots(len(ms), 1, figsize=(w / 60, len(ms) * (h / 60 + 0.35)))
    for ax, m in zip(np.atleast_1d(axes), ms):
      ax.imshow(grids[m], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      ax.set_title(f"{m}: support (K={config.eval.k}) | T={t_cols[0]} | T={t_cols[1]}", fontsize=8)
      ax.axis("off")
    fig.tight_layout()
    p = os.path.join(fig_dir, "samples_all.png")
    fig.savefig(p, dpi=80)
    plt.close(fig)
    paths.append(p)
  return paths
