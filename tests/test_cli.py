"""`metagan generate`: polarity detection, and the command end to end against the Python API.

The end-to-end run of the command on a tiny *evaluated* run lives in
tests/test_experiments_protocol.py (it reuses that test's run); its error cases
are in tests/test_errors.py.
"""

import os

import numpy as np
import pytest

import metagan_jax as mg
from metagan_jax import cli
from tests.conftest import TINY_RUN_GROUP


def _strokes(seed, n=4):
  """Omniglot-like raw images: dark strokes (0) on white (1), [n, 40, 40] (not the model size)."""
  rng = np.random.default_rng(seed)
  x = np.ones((n, 40, 40), np.float32)
  for i in range(n):
    r = rng.integers(8, 30)
    x[i, r : r + 3, 6:34] = 0.0
    x[i, 6:34, r : r + 2] = 0.0
  return x


def write_pngs(folder, imgs01):
  os.makedirs(folder, exist_ok=True)
  for i, x in enumerate(imgs01):
    cli.save_png(os.path.join(folder, f"img{i}.png"), x)
  return folder


def test_polarity_is_detected_on_inverted_copies(tmp_path):
  prep = mg.Preprocessing(image_size=28, channels=1, invert=True)
  dark_on_light = _strokes(0)
  a, b = (
    cli.read_images(write_pngs(str(tmp_path / d), x))[0]
    for d, x in (("orig", dark_on_light), ("inverted", 1.0 - dark_on_light))
  )
  assert cli.is_dark_on_light(a[0]) and not cli.is_dark_on_light(b[0])
  sa, flipped_a = cli.prepare(a, prep, "auto")
  sb, flipped_b = cli.prepare(b, prep, "auto")
  assert flipped_a == [True] * 4 and flipped_b == [False] * 4
  np.testing.assert_allclose(sa, sb, atol=1e-6)  # the same support either way
  assert sa.shape == (4, 28, 28, 1) and sa.min() >= -1 and sa.max() <= 1
  assert np.mean(sa > 0) < 0.5  # strokes light on a dark background, as the model draws
  forced, _ = cli.prepare(a, prep, "no")  # --invert no keeps the light background
  assert np.mean(forced > 0) > 0.5


def test_colour_and_transparent_images_are_read_as_viewers_show_them(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rgba = np.zeros((20, 30, 4), np.uint8)
  rgba[5:15, 10:12] = (200, 0, 0, 255)  # a red stroke on a transparent background
  Image.fromarray(rgba).save(tmp_path / "a.png")
  Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).convert("RGB").save(tmp_path / "b.jpg")
  imgs, names, skipped = cli.read_images(str(tmp_path))
  assert names == ["a.png", "b.jpg"] and not skipped
  assert imgs[0].shape == (20, 30, 3) and imgs[0][0, 0].min() == 1.0  # transparent -> white
  assert cli.is_dark_on_light(imgs[0])


def test_usage_errors_are_named_before_compute(tmp_path):
  with pytest.raises(cli.UsageError, match="no image files"):
    cli.read_images(str(tmp_path))
  (tmp_path / "x.png").write_bytes(b"not a png")
  with pytest.raises(cli.UsageError, match=r"x.png is not a readable image .* --skip-bad"):
    cli.read_images(str(tmp_path))
  with pytest.raises(cli.UsageError, match="none of its 1 image files is readable"):
    cli.read_images(str(tmp_path), skip_bad=True)


def test_psi_outside_0_1_is_refused_before_anything_loads(tmp_path):
  args = cli.parser().parse_args(
    [
      "generate",
      str(tmp_path / "no_run"),
      "--images",
      str(tmp_path),
      "--out",
      str(tmp_path / "out"),
      "--psi",
      "1.5",
    ]
  )
  with pytest.raises(cli.UsageError, match=r"--psi must be in \[0, 1\].*got 1.5"):
    cli.generate(args)


@TINY_RUN_GROUP
def test_image_run_given_recordings_is_refused(tiny_run, tmp_path, capsys):
  sf = pytest.importorskip("soundfile")
  rec = tmp_path / "rec"
  rec.mkdir()
  t = np.arange(4000) / 8000
  for i in range(3):
    sf.write(rec / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), 8000)
  code = cli.main(
    ["generate", tiny_run["workdir"], "--recordings", str(rec), "--out", str(tmp_path / "o")]
  )
  assert code == 2
  err = capsys.readouterr().err
  assert "holds recordings, but the run" in err and "draws images" in err
  assert not (tmp_path / "o").exists()
