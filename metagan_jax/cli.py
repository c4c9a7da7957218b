"""``metagan`` / ``python -m metagan_jax``: few-shot generation from your own images or recordings.

  python -m metagan_jax generate RUN_DIR --images DIR --steps T --num N --out OUT \\
      [--seed S] [--method NAME] [--psi P] [--invert auto|yes|no] [--skip-bad] \\
      [--overwrite] [--no-compilation-cache]

Reads every image in DIR (png, jpg, bmp, gif, tif, webp; colour or grey, any size),
converts it to the run's size, channels and polarity (dark strokes on a light
background, or light on dark, is detected; --invert overrides), adapts the run's
meta-GAN with the run's own rule for T steps (default: the run's headline),
samples with the run's tuned truncation psi (--psi overrides; 1: none) and
writes OUT/samples.npz (``samples``: float32 [N, H, W, C] in [-1, 1], the run's
polarity), OUT/grid.png (the support images as converted, then the samples, enlarged
for viewing), ``OUT/samples/*.png`` (each sample at the model's size) and
OUT/report.json.

A run on recordings (``experiments/voices.py``) takes a folder of recordings
instead (WAV, FLAC, OGG; any rate, mono or stereo, untrimmed): each is
resampled to the run's rate, trimmed of silence and loudness-normalised as in
training, adapted to, and OUT gets samples/*.wav (the samples after
Griffin-Lim), support/*.wav (the recordings as the model heard them),
spectrograms.png (the support's log-mel spectrograms, then the samples'),
samples.npz (``samples``: the spectrograms; ``waves``; ``sample_rate``) and
report.json. An image run given recordings, or an audio run given images, is an
error before any compute.

Several classes in one call: a DIR whose images sit in one sub-folder per class
(``DIR/<class>/*.png``) adapts to each class separately, with the same keys, and
writes each class's outputs to OUT/<class>/; OUT/report.json lists them. A
class's samples equal a one-class call's with the same --seed.

Every input is checked before any compute; OUT is written to a temporary folder
and renamed, so it is never half-written. Compiled programs are kept in a
persistent cache (metagan_jax.compile_cache: $JAX_COMPILATION_CACHE_DIR, else
~/.cache/metagan_jax/xla), so later calls skip compilation;
--no-compilation-cache or METAGAN_COMPILATION_CACHE=0 turns it off.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

__all__ = [
  "main",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff")  # data.audio.AUDIO_SUFFIXES
MIN_IMAGES = 2


class UsageError(ValueError):
  """Bad input to the command; the message names the value and the fix."""


def read_images(
  folder: str, skip_bad: bool = False
) -> tuple[list[np.ndarray], list[str], list[str]]:
  """Every image file of ``folder`` as float arrays in [0, 1] ``[H, W, C]``.

  Returns ``(images, names, skipped)``. A file that cannot be decoded raises
  :class:`UsageError` naming it, or is skipped with ``skip_bad``.
  """
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UsageError("reading images needs Pillow: pip install 'metagan_jax[data]'.") from None
  if not os.path.isdir(folder):
    raise UsageError(f"--images {folder}: no such folder; give the folder holding your images.")
  files = sorted(
    f
    for f in os.listdir(folder)
    if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
  )
  if not files:
    others = sorted(
      f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)) and "." in f
    )
    raise UsageError(
      f"--images {folder}: no image files in it, nor recordings (looked for "
      f"{', '.join(IMAGE_EXTENSIONS)} and, for a run on recordings, "
      f"{', '.join(AUDIO_EXTENSIONS)})"
      + (f"; found {', '.join(others[:3])}: convert them to one of those." if others else ".")
    )
  images, names, skipped = [], [], []
  for f in files:
    try:
      with Image.open(os.path.join(folder, f)) as im:
        im.load()
        mode = "RGBA" if im.mode in ("RGBA", "LA", "P") else ("RGB" if im.mode != "L" else "L")
        arr = np.asarray(im.convert(mode), np.float32) / 255.0
    except Exception as e:  # pylint: disable=broad-except
      if not skip_bad:
        raise UsageError(
          f"--images: {os.path.join(folder, f)} is not a readable image "
          f"({type(e).__name__}: {e}); remove it or pass --skip-bad."
        ) from None
      skipped.append(f)
      continue
    if arr.ndim == 2:
      arr = arr[..., None]
    if arr.shape[-1] == 4:  # composite transparent pixels onto white, as a viewer shows them
      arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    images.append(arr)
    names.append(f)
  if not images:
    raise UsageError(
      f"--images {folder}: none of its {len(files)} image files is readable "
      f"(skipped: {', '.join(skipped)})."
    )
  return images, names, skipped


def _has(folder: str, extensions) -> bool:
  return any(
    f.lower().endswith(extensions) and os.path.isfile(os.path.join(folder, f))
    for f in os.listdir(folder)
  )


def _has_images(folder: str) -> bool:
  return _has(folder, IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)


def input_kind(folders: list[str]) -> str:
  """``"audio"`` if the class folders hold recordings and no images, else ``"image"``."""
  audio = any(_has(f, AUDIO_EXTENSIONS) for f in folders)
  images = any(_has(f, IMAGE_EXTENSIONS) for f in folders)
  if audio and images:
    raise UsageError(
      f"--images {os.path.dirname(folders[0]) if len(folders) > 1 else folders[0]} holds "
      f"both images and recordings; give a folder of one kind."
    )
  return "audio" if audio else "image"


def read_recordings(folder: str, skip_bad: bool = False):
  """Every recording of ``folder``: ``(waves, rates, names, skipped)``; mono float in [-1, 1].

  A file that cannot be read (not audio, empty, an unreadable sample format)
  raises :class:`UsageError` naming it, or is skipped with ``skip_bad``.
  """
  from metagan_jax.data import audio  # pylint: disable=g-import-not-at-top
  from metagan_jax.data.sources import DataError  # pylint: disable=g-import-not-at-top

  files = sorted(
    f
    for f in os.listdir(folder)
    if f.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
  )
  waves, rates, names, skipped = [], [], [], []
  for f in files:
    try:
      w, r = audio.read_audio(os.path.join(folder, f))
    except DataError as e:
      if not skip_bad:
        raise UsageError(f"--images: {e} (or pass --skip-bad)") from None
      skipped.append(f)
      continue
    waves.append(w)
    rates.append(r)
    names.append(f)
  return waves, rates, names, skipped


def class_folders(folder: str) -> list[str] | None:
  """The class sub-folders of ``folder`` (sorted names), or ``None`` if it holds images itself.

  Hidden sub-folders (``.name``) are ignored. A folder with both images and
  class sub-folders is ambiguous and raises :class:`UsageError`.
  """
  if not os.path.isdir(folder):
    raise UsageError(f"--images {folder}: no such folder; give the folder holding your images.")
  subs = sorted(
    d
    for d in os.listdir(folder)
    if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))
  )
  if _has_images(folder):
    if any(_has_images(os.path.join(folder, d)) for d in subs):
      raise UsageError(
        f"--images {folder} holds images and also sub-folders of images; put one "
        f"class's images directly in it, or every class in its own sub-folder."
      )
    return None
  return subs or None


def is_dark_on_light(img_HxWxC: np.ndarray) -> bool:
  """True if the image's background (its border pixels) is light, i.e. strokes are dark."""
  g = img_HxWxC.mean(-1)
  border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
  return float(np.median(border)) > 0.5


def prepare(images: list[np.ndarray], prep, invert: str) -> tuple[np.ndarray, list[bool]]:
  """Images in [0, 1] -> the run's ``[K, S, S, C]`` in [-1, 1]; returns (support, inverted per image).

  The run's model draws in its training polarity: with ``prep.invert`` (Omniglot,
  whose raw images are dark strokes on white) light strokes on a dark
  background. ``invert="auto"`` then inverts exactly the images with a light
  background (their border), so both polarities end up as the model draws;
  runs that did not invert their data (photos, MNIST) keep images as they are.
  ``"yes"`` / ``"no"`` invert every image or none.
  """
  from metagan_jax.data import preprocess  # pylint: disable=g-import-not-at-top

  out, flips = [], []
  for img in images:
    if invert == "auto":
      flip = prep.invert and is_dark_on_light(img)
    else:
      flip = invert == "yes"
    x = preprocess.to_channels(img[None], prep.channels, "image")
    out.append(prep.apply(x, invert=flip)[0])
    flips.append(flip)
  return np.stack(out), flips


def image_grid(x_NxHxWxC: np.ndarray, cols: int) -> np.ndarray:
  """Images in [-1, 1] tiled row-major into one array in [0, 1] (blank cells: background)."""
  x = np.clip((np.asarray(x_NxHxWxC) + 1) / 2, 0, 1)
  n, h, w, c = x.shape
  rows = -(-n // cols)
  background = np.median(x[:, 0, :, :])  # the images' top rows
  x = np.concatenate([x, np.full((rows * cols - n, h, w, c), background, x.dtype)])
  g = x.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  return g[..., 0] if c == 1 else g


def save_png(path: str, img01: np.ndarray, scale: int = 1) -> None:
  """Saves an image in [0, 1]; ``scale`` > 1 enlarges it by pixel repetition (for viewing)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  arr = np.round(np.clip(img01, 0, 1) * 255).astype(np.uint8)
  if scale > 1:
    arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
  Image.fromarray(arr).save(path)


def _spectrogram_grid(x_NxMxTx1: np.ndarray, cols: int) -> np.ndarray:
  """Spectrograms in [-1, 1] tiled like :func:`image_grid`, low frequencies at the bottom."""
  return image_grid(np.asarray(x_NxMxTx1)[:, ::-1], cols)


def _write_audio_class(
  folder: str, support: np.ndarray, support_waves, samples: np.ndarray, waves, rate: int, report
) -> None:
  """One class's outputs from a run on recordings (see the module docstring)."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  os.makedirs(folder, exist_ok=True)
  np.savez(
    os.path.join(folder, "samples.npz"), samples=samples, waves=waves, sample_rate=np.int32(rate)
  )
  cols = max(len(support), min(8, len(samples)))
  rows = [_spectrogram_grid(support, cols), _spectrogram_grid(samples, cols)]
  gap = np.full((4,) + rows[0].shape[1:], 0.5, rows[0].dtype)
  save_png(os.path.join(folder, "spectrograms.png"), np.concatenate([rows[0], gap, rows[1]]), 2)
  width = len(str(len(samples) - 1))
  for sub, clips in (("samples", waves), ("support", support_waves)):
    os.makedirs(os.path.join(folder, sub))
    for i, w in enumerate(clips):
      sf.write(os.path.join(folder, sub, f"{i:0{width}d}.wav"), w, rate, subtype="PCM_16")
  with open(os.path.join(folder, "report.json"), "w") as f:
    json.dump(report, f, indent=1)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _write_class(folder: str, support: np.ndarray, samples: np.ndarray, report: dict) -> None:
  """One class's outputs: samples.npz, grid.png, samples/*.png and report.json in ``folder``."""
  os.makedirs(folder, exist_ok=True)
  np.savez(os.path.join(folder, "samples.npz"), samples=samples)
  num = len(samples)
  cols = max(len(support), min(8, num))
  rows = [image_grid(support, cols), image_grid(samples, cols)]
  # A row gap between the support and the samples; cells enlarged to >= 56 px.
  gap = np.full((max(1, support.shape[1] // 4),) + rows[0].shape[1:], 0.5, rows[0].dtype)
  save_png(
    os.path.join(folder, "grid.png"),
    np.concatenate([rows[0], gap, rows[1]], axis=0),
    scale=max(1, 56 // support.shape[1]),
  )
  os.makedirs(os.path.join(folder, "samples"))
  width = len(str(num - 1))
  for i, x in enumerate(samples):
    save_png(os.path.join(folder, "samples", f"{i:0{width}d}.png"), image_grid(x[None], 1))
  with open(os.path.join(folder, "report.json"), "w") as f:
    json.dump(report, f, indent=1)


def generate(args) -> dict:
  """The ``generate`` command; returns its report."""
  t_start = time.perf_counter()
  from metagan_jax import compile_cache  # pylint: disable=g-import-not-at-top

  # Before any computation: JAX decides at its first compilation whether a cache is used.
  cache_dir = None
  if args.no_compilation_cache:
    compile_cache.disable()
  else:
    cache_dir = compile_cache.enable()
  stats = compile_cache.Stats()
  import metagan_jax as mg  # pylint: disable=g-import-not-at-top
  from metagan_jax.progress import Progress  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(args.out)
  # 1. Everything is checked before any compute.
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not args.overwrite:
    raise UsageError(
      f"--out {args.out} exists and is not empty; choose a new folder or pass --overwrite."
    )
  if args.num < 1:
    raise UsageError(f"--num must be >= 1, got {args.num}.")
  if args.steps is not None and args.steps < 0:
    raise UsageError(f"--steps must be >= 0 (0: no adaptation step), got {args.steps}.")
  if not 0 <= args.seed < 2**32:
    raise UsageError(f"--seed must be in [0, 2**32), got {args.seed}.")
  if args.psi is not None and not 0.0 <= args.psi <= 1.0:
    raise UsageError(f"--psi must be in [0, 1] (1: no truncation), got {args.psi}.")
  parent = os.path.dirname(out) or "."
  if os.path.exists(parent) and not os.access(parent, os.W_OK):
    raise UsageError(f"--out {args.out}: cannot write into {parent}.")
  subs = class_folders(args.images)
  folders = [args.images] if subs is None else [os.path.join(args.images, d) for d in subs]
  kind = input_kind(folders)
  classes = []  # (name, images or (waves, rates), file names, skipped)
  for folder in folders:
    if kind == "audio":
      waves, rates, names, skipped = read_recordings(folder, args.skip_bad)
      items, what = (waves, rates), "recording"
    else:
      items, names, skipped = read_images(folder, args.skip_bad)
      what = "image"
    if len(names) < MIN_IMAGES:
      raise UsageError(
        f"--images {folder}: {len(names)} usable {what}; the adaptation needs "
        f"at least {MIN_IMAGES} (with one {what} a GAN can only copy it)."
      )
    classes.append((os.path.basename(os.path.normpath(folder)), items, names, skipped))
  t_load = time.perf_counter()
  run = mg.load_run(args.run_dir, method=args.method)
  modality = run.preprocessing.modality
  if kind != modality:
    raise UsageError(
      f"--images {args.images} holds {'recordings' if kind == 'audio' else 'images'}, but the "
      f"run {run.path} "
      + (
        "models sound (log-mel spectrograms of recordings): give a folder of WAV, FLAC or OGG "
        "recordings."
        if modality == "audio"
        else f"draws images: give a folder of images ({', '.join(IMAGE_EXTENSIONS)})."
      )
    )
  if args.psi is not None:
    run = dataclasses.replace(run, rule=dict(run.rule, psi=args.psi))
  t_loaded = time.perf_counter()
  steps = run.headline if args.steps is None else args.steps
  if kind == "audio":
    from metagan_jax.data.sources import DataError  # pylint: disable=g-import-not-at-top

    try:  # every recording of every class is checked before anything is compiled
      clips = [
        run.preprocessing.prepare_audio(*c[1], [os.path.join(f, n) for n in c[2]])
        for c, f in zip(classes, folders)
      ]
    except DataError as e:
      raise UsageError(f"--images: {e}") from None
    supports = tuple(run.preprocessing.spectrogram.encode(x) for x in clips)
    flips = [[False] * len(c[2]) for c in classes]
  else:
    supports, flips = zip(*(prepare(c[1], run.preprocessing, args.invert) for c in classes))
  # A tqdm bar on a terminal (plain lines without tqdm); in a log file, plain lines.
  bar = Progress(total=3, desc="generate", file=sys.stderr, disable=args.quiet)
  bar.set_postfix_str(
    f"adapting {run.method} for {steps} steps"
    + (f" to {len(classes)} classes" if subs is not None else "")
  )
  t0 = time.perf_counter()
  with compile_cache.repairing(stats):
    samples = [
      x.astype(np.float32)
      for x in run.generate_many(supports, args.num, seed=args.seed, steps=steps)
    ]
  if kind == "audio":  # Griffin-Lim: the samples as sound
    spg = run.preprocessing.spectrogram
    iters = int(run.config.get("oracles", {}).get("gl_iters", 64))
    # one Griffin-Lim call (one compiled program) per class for its samples and support
    both = [spg.decode(np.concatenate([x, s]), iters=iters) for x, s in zip(samples, supports)]
    waves = [w[: len(x)] for w, x in zip(both, samples)]
    support_waves = [w[len(x) :] for w, x in zip(both, samples)]
  t_adapt = time.perf_counter() - t0
  bar.update(1)
  if not all(np.all(np.isfinite(x)) for x in samples):
    raise FloatingPointError(
      "the adapted generator produced non-finite samples; try fewer --steps or another --method."
    )
  # 2. Written to a temporary folder first, then renamed into place.
  bar.set_postfix_str("writing")
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".metagan-", dir=parent)
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; OUT gets the usual mode
  common = {
    "run": run.path,
    "method": run.method,
    "meta_seed": run.seed,
    "steps": steps,
    "seed": args.seed,
    "num": args.num,
    "rule": run.rule,
    "modality": modality,
  }
  if kind == "audio":
    common["sample_rate"] = run.preprocessing.spectrogram.spec.sample_rate
    common["seconds"] = run.preprocessing.spectrogram.spec.seconds
  else:
    common["polarity"] = "light strokes on dark" if run.preprocessing.invert else "as trained"
  try:
    per_class = []
    for c, ((name, _, names, skipped), support, flip, x) in enumerate(
      zip(classes, supports, flips, samples)
    ):
      notes = []
      what = "recordings" if kind == "audio" else "images"
      if len(names) > run.train_k:
        notes.append(
          f"{len(names)} {what}, more than the {run.train_k} per class the run was "
          f"meta-trained on: every adaptation step uses all of them as one batch."
        )
      elif len(names) < run.train_k:
        notes.append(
          f"{len(names)} {what}, fewer than the {run.train_k} per class the run was "
          f"meta-trained and evaluated with: expect samples closer to these {len(names)}."
        )
      rep = {
        **common,
        "images": len(names),
        "image_files": names,
        "skipped": skipped,
        "notes": notes,
      }
      if kind == "image":
        rep["inverted"] = flip
      if subs is not None:
        rep["class"] = name
      folder = tmp if subs is None else os.path.join(tmp, name)
      if kind == "audio":
        rate = common["sample_rate"]
        _write_audio_class(folder, support, support_waves[c], x, waves[c], rate, rep)
      else:
        _write_class(folder, support, x, rep)
      per_class.append(rep)
    bar.update(1)
    timing = {
      "adapt_and_sample_s": round(t_adapt, 2),
      "load_run_s": round(t_loaded - t_load, 2),
      "compilation_cache": {"dir": cache_dir, **stats.as_dict()},
      "total_s": round(time.perf_counter() - t_start, 2),
    }
    if subs is None:
      report = {**per_class[0], **timing}
    else:
      report = {
        **common,
        "classes": [r["class"] for r in per_class],
        "per_class": per_class,
        "images": sum(r["images"] for r in per_class),
        "notes": [f"{r['class']}: {n}" for r in per_class for n in r["notes"]],
        **timing,
      }
    with open(os.path.join(tmp, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
    # The old output (--overwrite) moves aside first and goes only once the new one is in place.
    old = None
    if os.path.exists(out):
      old = tempfile.mkdtemp(prefix=".metagan-old-", dir=parent)
      os.replace(out, os.path.join(old, "out"))
    try:
      os.replace(tmp, out)
    except BaseException:
      if old:
        os.replace(os.path.join(old, "out"), out)
      raise
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  bar.update(1)
  bar.close()
  return report


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="metagan", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  g = sub.add_parser(
    "generate",
    help="adapt a trained meta-GAN to your images and sample",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  g.add_argument("run_dir", help="a run folder of experiments/omniglot.py (its --workdir)")
  g.add_argument(
    "--images",
    "--recordings",
    dest="images",
    required=True,
    help="folder of your images or recordings (one class), or of one sub-folder per class",
  )
  g.add_argument(
    "--steps", type=int, default=None, help="adaptation steps (default: headline; 0: none)"
  )
  g.add_argument("--num", type=int, default=64, help="samples to draw")
  g.add_argument("--out", required=True, help="output folder (must be new or empty)")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument(
    "--psi",
    type=float,
    default=None,
    help="sampling truncation in [0, 1]: 1 samples as trained, lower is more "
    "typical and less varied (default: the run's tuned psi)",
  )
  g.add_argument(
    "--method", default=None, help="method to load (default: the run's best at its headline T)"
  )
  g.add_argument(
    "--invert",
    default="auto",
    choices=["auto", "yes", "no"],
    help="invert your images (auto: detect dark-on-light vs light-on-dark)",
  )
  g.add_argument("--skip-bad", action="store_true", help="skip unreadable files")
  g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  g.add_argument("--quiet", action="store_true", help="no progress bar")
  g.add_argument(
    "--no-compilation-cache",
    action="store_true",
    help="compile afresh and keep nothing (default: a persistent cache in "
    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/metagan_jax/xla)",
  )
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  import metagan_jax as mg  # pylint: disable=g-import-not-at-top

  try:
    report = generate(args)
  except (UsageError, mg.RunError) as e:
    print(f"metagan generate: error: {e}", file=sys.stderr)
    return 2
  notes = "".join(f" Note: {n}" for n in report["notes"])
  audio = report.get("modality") == "audio"
  items = "recordings" if audio else "images"
  files = (
    "samples/*.wav, support/*.wav, spectrograms.png, samples.npz, report.json"
    if audio
    else "samples.npz, grid.png, samples/, report.json"
  )
  if "classes" in report:
    what = (
      f"{len(report['classes'])} classes ({report['images']} {items}) for {report['steps']} "
      f"steps in {report['total_s']:.1f} s -> {os.path.abspath(args.out)}/<class>/ "
      f"({files} each)"
    )
  else:
    what = (
      f"{report['images']} {items} for {report['steps']} steps in {report['total_s']:.1f} s "
      f"-> {os.path.abspath(args.out)}/ ({files})"
    )
  print(f"{report['num']} samples of {report['method']} adapted to {what}.{notes}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
