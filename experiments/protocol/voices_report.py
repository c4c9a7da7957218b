"""The voices protocol's outputs: the results tables, the spectrogram picture and the WAV files."""

from __future__ import annotations

import os

import numpy as np

from experiments import train_lib

#: Rows in table order; meta methods and transfer follow in the config's order.
FIXED_ROWS = (
  ("real", "real (held-out clips)"),
  ("roundtrip", "round trip (held-out, log-mel, Griffin-Lim)"),
  ("copy", "copy (support shifted in time and pitch)"),
)


def _fmt(cell: dict, scale: float = 1.0, digits: int = 2) -> str:
  m, ci = cell["mean"] * scale, cell.get("ci")
  if ci is None or not np.isfinite(ci[0]):
    return f"{m:.{digits}f}"
  return f"{m:.{digits}f} [{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]"


def row_names(config) -> list[tuple[str, str]]:
  """``(cell key, label)`` of every row at the headline T."""
  t = int(config.eval.headline)
  methods = train_lib.parse_list(config.methods)
  return list(FIXED_ROWS) + [(f"{m}|{t}", m) for m in methods]


def markdown_table(config, summary: dict, info: dict) -> str:
  """The pooled table at T = ``eval.headline`` and the per-fold table of EER and voice fidelity."""
  cells, folds = summary["cells"], summary["folds"]
  ec, t = config.eval, int(config.eval.headline)
  seeds = train_lib.parse_list(config.meta_seeds, int)
  ref = summary.get("reference", "transfer")
  lines = [
    f"**A new voice from K = {ec.k} recordings: {len(folds)} test speaker(s) "
    f"({', '.join(folds.values())}), 10 digits each, T = {t} steps** ({len(seeds)} meta-training "
    f"seed(s) per fold; mean [95% bootstrap CI over (fold, class)]; headline meta-learner: "
    f"{info['headline']['method']}, fixed on the validation speakers)",
    "",
    "| row | voice fidelity | digit fidelity | voice margin (cos) | EER (mean of folds) "
    "| KID x1e3 | diversity gen/real | memorisation NN ratio | margin vs "
    f"{ref}: diff, p | voice fidelity vs {ref}: diff, p |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for key, label in row_names(config):
    if key not in cells:
      continue
    c = cells[key]
    vs = c.get(f"vs_{ref}")
    vs_m = f"{vs['voice_margin']['mean_diff']:+.3f}, p={vs['voice_margin']['p']:.3g}" if vs else ""
    vs_f = (
      f"{vs['voice_fidelity']['mean_diff']:+.2f}, p={vs['voice_fidelity']['p']:.3g}" if vs else ""
    )
    if key == f"{ref}|{t}":
      vs_m = vs_f = "(reference)"
    lines.append(
      f"| {label} | {_fmt(c['voice_fidelity'])} | {_fmt(c['digit_fidelity'])} | "
      f"{_fmt(c['voice_margin'], digits=3)} | {100 * c['eer']['mean']:.1f}% | "
      f"{_fmt(c['kid'], 1e3, 0)} | {_fmt(c['diversity'])} | {_fmt(c['memorisation'])} | "
      f"{vs_m} | {vs_f} |"
    )
  lines += [
    "",
    "**Per fold** (test speaker): EER / voice fidelity / digit fidelity",
    "",
    "| row | " + " | ".join(f"fold {f} ({s})" for f, s in folds.items()) + " |",
    "|---|" + "---|" * len(folds),
  ]
  for key, label in row_names(config):
    if key not in cells:
      continue
    c = cells[key]
    lines.append(
      f"| {label} | "
      + " | ".join(
        f"{100 * c['eer']['per_fold'][f]:.1f}% / {c['voice_fidelity']['per_fold'][f]:.2f} / "
        f"{c['digit_fidelity']['per_fold'][f]:.2f}"
        for f in folds
      )
      + " |"
    )
  o = info["oracles"]
  lines += [
    "",
    f"Oracles (recordings 0-24 of every class): speaker accuracy {o['speaker_acc_real']:.3f} "
    f"on real held-out clips, {o['speaker_acc_roundtrip']:.3f} after the round trip; digit "
    f"accuracy {o['digit_acc_real']:.3f} and {o['digit_acc_roundtrip']:.3f}.",
  ]
  return "\n".join(lines)


def _spec_panel(ax, x_MxT, title=None):
  ax.imshow(x_MxT, origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=7)


def save_picture_and_wavs(
  config, per_fold: dict, method: str, out_dir: str, n_show: int = 4, n_classes: int = 2
) -> dict:
  """``voices.png`` (per shown class: the K support spectrograms, ``n_show`` adapted samples of
  ``method`` and of ``transfer``) and the same clips as WAV files under ``audio/``.

  The first seed of each method and the first ``n_classes`` digits of each fold are shown.
  Returns ``{"picture": path, "wavs": [paths], "clips": [...]}``; ``clips`` lists per shown
  class its support recordings (FSDD file names, ``{digit}_{speaker}_{index}.wav``) and each
  method's WAV files relative to the results file ``experiments/results/<name>.json`` (they are
  committed under ``experiments/results/<name>/audio/``), for the docs' audio players.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  t = int(config.eval.headline)
  seed = train_lib.parse_list(config.meta_seeds, int)[0]
  rows = []
  for f, res in sorted(per_fold.items()):
    cls = res["cls"]
    for c in range(min(n_classes, len(cls["names"]))):
      rows.append((f, res, c))
  K = int(config.eval.k)
  cols = K + 2 * n_show
  fig, axes = plt.subplots(
    len(rows), cols, figsize=(0.75 * cols + 0.5, 1.0 * len(rows) + 0.4), squeeze=False
  )
  wavs, clips = [], []
  rate = per_fold[next(iter(per_fold))]["cls"]["spectrogram"].spec.sample_rate
  for r, (_, res, c) in enumerate(rows):
    cls, name = res["cls"], res["cls"]["names"][c]
    sup = cls["support"][c]
    gen = {m: res["specs"].get(f"{m}|{seed}|{t}") for m in (method, "transfer")}
    for k in range(K):
      _spec_panel(axes[r, k], sup[k, ..., 0], "support" if r == 0 and k == 0 else None)
    for j, m in enumerate((method, "transfer")):
      for i in range(n_show):
        ax = axes[r, K + j * n_show + i]
        if gen[m] is None:
          ax.axis("off")
          continue
        _spec_panel(ax, gen[m][c, i, ..., 0], m if r == 0 and i == 0 else None)
    axes[r, 0].set_ylabel(name, fontsize=7)
    folder = os.path.join(out_dir, "audio", name.replace("/", "_"))
    os.makedirs(folder, exist_ok=True)
    speaker, digit = name.split("/")
    rel = f"{config.name}/audio/{name.replace('/', '_')}"
    clip = {
      "class": name,
      "fold": int(res.get("fold", 0)),
      "support": [f"{digit}_{speaker}_{i}.wav" for i in cls["indices"][name]["support"]],
      "generated": {},
    }
    clips.append(clip)
    for k in range(K):
      p = os.path.join(folder, f"support_{k}.wav")
      sf.write(p, cls["support_wave"][c, k], rate, subtype="PCM_16")
      wavs.append(p)
    for m in (method, "transfer"):
      waves = res["samples"].get(f"{m}|{seed}|{t}")
      if waves is None:
        continue
      for i in range(n_show):
        p = os.path.join(folder, f"{m}_{i}.wav")
        sf.write(p, waves[c, i], rate, subtype="PCM_16")
        wavs.append(p)
        clip["generated"].setdefault(m, []).append(f"{rel}/{m}_{i}.wav")
  fig.suptitle(
    f"log-mel spectrograms (frequency up, time right): support, {method} after T = {t}, "
    f"transfer after T = {t}",
    fontsize=8,
  )
  fig.tight_layout()
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "voices.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return {"picture": path, "wavs": wavs, "clips": clips}
