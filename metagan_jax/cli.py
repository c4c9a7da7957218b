"""``metagan`` / ``python -m metagan_jax``: few-shot generation from your own images.

  python -m metagan_jax generate RUN_DIR --images DIR --steps T --num N --out OUT \\
      [--seed S] [--method NAME] [--invert auto|yes|no] [--skip-bad] [--overwrite]

Reads every image in DIR (png, jpg, bmp, gif, tif, webp; colour or grey, any size),
converts it to the run's size, channels and polarity (dark strokes on a light
background, or light on dark, is detected; --invert overrides), adapts the run's
meta-GAN with the run's own rule for T steps (default: the run's headline) and
writes OUT/samples.npz (``samples``: float32 [N, H, W, C] in [-1, 1], the run's
polarity), OUT/grid.png (the support images as converted, then the samples, enlarged
for viewing), OUT/samples/*.png (each sample at the model's size) and
OUT/report.json. Every input is checked before any compute; OUT is written to a
temporary folder and renamed, so it is never half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MIN_IMAGES = 2


class UsageError(ValueError):
  """Bad input to the command; the message names the value and the fix."""


def read_images(folder: str, skip_bad: bool = False) -> tuple[list[np.ndarray], list[str], list[str]]:
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
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(folder, f)))
  if not files:
    raise UsageError(f"--images {folder}: no image files in it (looked for "
                     f"{', '.join(IMAGE_EXTENSIONS)}).")
  images, names, skipped = [], [], []
  for f in files:
    try:
      with Image.open(os.path.join(folder, f)) as im:
        im.load()
        mode = "RGBA" if im.mode in ("RGBA", "LA", "P") else ("RGB" if im.mode != "L" else "L")
        arr = np.asarray(im.convert(mode), np.float32) / 255.0
    except Exception as e:  # pylint: disable=broad-except
      if not skip_bad:
        raise UsageError(f"--images: {os.path.join(folder, f)} is not a readable image "
                         f"({type(e).__name__}: {e}); remove it or pass --skip-bad.") from None
      skipped.append(f)
      continue
    if arr.ndim == 2:
      arr = arr[..., None]
    if arr.shape[-1] == 4:  # composite transparent pixels onto white, as a viewer shows them
      arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    images.append(arr)
    names.append(f)
  if not images:
    raise UsageError(f"--images {folder}: none of its {len(files)} image files is readable "
                     f"(skipped: {', '.join(skipped)}).")
  return images, names, skipped


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


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


class _NoBar:
  def __init__(self, *a, **k):
    pass

  def update(self, *a):
    pass

  set_postfix_str = close = update


def generate(args) -> dict:
  """The ``generate`` command; returns its report."""
  import metagan_jax as mg  # pylint: disable=g-import-not-at-top
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:  # the bar is a nicety: without tqdm, the command runs without one
    tqdm = _NoBar
  t_start = time.perf_counter()
  out = os.path.abspath(args.out)
  # 1. Everything is checked before any compute.
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not args.overwrite:
    raise UsageError(f"--out {args.out} exists and is not empty; choose a new folder or pass "
                     f"--overwrite.")
  if args.num < 1:
    raise UsageError(f"--num must be >= 1, got {args.num}.")
  if args.steps is not None and args.steps < 1:
    raise UsageError(f"--steps must be >= 1, got {args.steps}.")
  parent = os.path.dirname(out) or "."
  if os.path.exists(parent) and not os.access(parent, os.W_OK):
    raise UsageError(f"--out {args.out}: cannot write into {parent}.")
  images, names, skipped = read_images(args.images, args.skip_bad)
  if len(images) < MIN_IMAGES:
    raise UsageError(f"--images {args.images}: {len(images)} usable image; the adaptation needs "
                     f"at least {MIN_IMAGES} (with one image a GAN can only copy it).")
  run = mg.load_run(args.run_dir, method=args.method)
  steps = run.headline if args.steps is None else args.steps
  notes = []
  if len(images) > run.train_k:
    notes.append(f"{len(images)} images, more than the {run.train_k} per class the run was "
                 f"meta-trained on: every adaptation step uses all of them as one batch.")
  support, flips = prepare(images, run.preprocessing, args.invert)
  bar = tqdm(total=3, desc="generate", file=sys.stderr, disable=args.quiet)
  bar.set_postfix_str(f"adapting {run.method} for {steps} steps")
  t0 = time.perf_counter()
  samples = run.generate(support, args.num, seed=args.seed, steps=steps).astype(np.float32)
  t_adapt = time.perf_counter() - t0
  bar.update(1)
  if not np.all(np.isfinite(samples)):
    raise FloatingPointError("the adapted generator produced non-finite samples; try fewer "
                             "--steps or another --method.")
  # 2. Written to a temporary folder first, then renamed into place.
  bar.set_postfix_str("writing")
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".metagan-", dir=parent)
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; OUT gets the usual mode
  try:
    np.savez(os.path.join(tmp, "samples.npz"), samples=samples)
    cols = max(len(support), min(8, args.num))
    rows = [image_grid(support, cols), image_grid(samples, cols)]
    # A row gap between the support and the samples; cells enlarged to >= 56 px.
    gap = np.full((max(1, support.shape[1] // 4),) + rows[0].shape[1:], 0.5, rows[0].dtype)
    save_png(os.path.join(tmp, "grid.png"), np.concatenate([rows[0], gap, rows[1]], axis=0),
             scale=max(1, 56 // support.shape[1]))
    os.makedirs(os.path.join(tmp, "samples"))
    width = len(str(args.num - 1))
    for i, x in enumerate(samples):
      save_png(os.path.join(tmp, "samples", f"{i:0{width}d}.png"), image_grid(x[None], 1))
    bar.update(1)
    report = {"run": run.path, "method": run.method, "meta_seed": run.seed, "steps": steps,
              "seed": args.seed, "num": args.num, "images": len(images), "image_files": names,
              "skipped": skipped, "inverted": flips, "rule": run.rule,
              "polarity": "light strokes on dark" if run.preprocessing.invert else "as trained",
              "adapt_and_sample_s": round(t_adapt, 2), "notes": notes,
              "total_s": round(time.perf_counter() - t_start, 2)}
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
  g = sub.add_parser("generate", help="adapt a trained meta-GAN to your images and sample",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  g.add_argument("run_dir", help="a run folder of experiments/omniglot.py (its --workdir)")
  g.add_argument("--images", required=True, help="folder of your images (one class)")
  g.add_argument("--steps", type=int, default=None, help="adaptation steps (default: headline)")
  g.add_argument("--num", type=int, default=64, help="samples to draw")
  g.add_argument("--out", required=True, help="output folder (must be new or empty)")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--method", default=None,
                 help="method to load (default: the run's best at its headline T)")
  g.add_argument("--invert", default="auto", choices=["auto", "yes", "no"],
                 help="invert your images (auto: detect dark-on-light vs light-on-dark)")
  g.add_argument("--skip-bad", action="store_true", help="skip unreadable files")
  g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  g.add_argument("--quiet", action="store_true", help="no progress bar")
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
  print(f"{report['num']} samples of {report['method']} adapted to {report['images']} images "
        f"for {report['steps']} steps in {report['total_s']:.1f} s -> "
        f"{os.path.abspath(args.out)}/ (samples.npz, grid.png, samples/, report.json).{notes}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
