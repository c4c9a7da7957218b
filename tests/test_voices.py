"""The voices experiment end to end on a tiny config, and `metagan generate` from recordings.

One tiny run of experiments/voices.py (one fold of FSDD, 3 pre-training steps, 2 Reptile
meta-steps, the oracles trained for 20 steps) is shared by the tests of this file; they run on
one xdist worker. FSDD is read from ../shared/data/fsdd (or $METAGAN_FSDD_DIR); without it the
tests are skipped, except under CI, where it must be there.
"""

import json
import os
import shutil

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

import metagan_jax as mg  # noqa: E402
from metagan_jax import cli  # noqa: E402

VOICES_GROUP = pytest.mark.xdist_group("tiny_voices")
pytestmark = VOICES_GROUP


@pytest.fixture(scope="module")
def fsdd_dir():
  path = mg.data.find_fsdd(required=False)
  if path is None:
    if os.environ.get("CI"):
      pytest.fail("CI must have FSDD at ../shared/data/fsdd.")
    pytest.skip("FSDD not found")
  return path


@pytest.fixture(scope="module")
def voices_run(fsdd_dir, tmp_path_factory):
  from experiments import voices  # pylint: disable=g-import-not-at-top
  from experiments.configs import voices_tiny  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("voices")
  config = voices_tiny.get_config()
  config.data_dir = str(fsdd_dir)
  config.oracles.cache_dir = str(root / "cache")
  work = str(root / "work")
  out = voices.train_and_evaluate(config, work, progress=False)
  return {"config": config, "workdir": work, "out": out, "fsdd": fsdd_dir}


def test_tiny_run_scores_every_row_and_writes_sound(voices_run):
  work = voices_run["workdir"]
  with open(os.path.join(work, "eval", "summary.json")) as f:
    doc = json.load(f)
  assert doc["kind"] == "voices"  # what the docs' results tables render it by
  cells = doc["summary"]["cells"]
  for row in ("real", "roundtrip", "copy", "reptile|2", "transfer|2", "reptile|0"):
    assert row in cells, sorted(cells)
    for m in ("voice_fidelity", "digit_fidelity"):
      assert 0.0 <= cells[row][m]["mean"] <= 1.0
    assert 0.0 <= cells[row]["eer"]["mean"] <= 1.0
  assert doc["summary"]["folds"] == {"0": "george"}  # fold 0 tests the first speaker
  assert doc["info"]["headline"]["method"] == "reptile"
  assert "vs_transfer" in cells["reptile|2"] and "vs_transfer" not in cells["real"]
  table = voices_run["out"]["table"]
  assert "round trip" in table and "| reptile |" in table and "george" in table
  assert os.path.exists(os.path.join(work, "eval", "voices.png"))
  wavs = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(os.path.join(work, "eval", "audio")) for f in fs
  )
  assert any("reptile_0.wav" in w for w in wavs) and any("support_0.wav" in w for w in wavs)
  x, rate = sf.read(wavs[0])
  assert rate == 8000 and x.ndim == 1 and len(x) == mg.audio.SpecConfig().num_samples
  # the fold folder is a run folder: its spectrogram's moments are the training voices'
  run = mg.load_run(os.path.join(work, "fold0"))
  assert run.method == "reptile" and run.preprocessing.modality == "audio"
  assert run.model.data_shape == (64, 32, 1)


def _four_recordings(fsdd, folder, speaker="george", digit=3):
  os.makedirs(folder, exist_ok=True)
  for i in range(30, 34):
    shutil.copy(os.path.join(fsdd, "recordings", f"{digit}_{speaker}_{i}.wav"), folder)
  return folder


def test_generate_from_recordings_writes_readable_wavs(voices_run, tmp_path, capsys):
  rec = _four_recordings(voices_run["fsdd"], str(tmp_path / "rec"))
  # a stereo file at 16 kHz, as a phone might record: resampled and mixed down
  x, r = sf.read(os.path.join(rec, "3_george_33.wav"))
  up = np.interp(np.arange(0, len(x), 0.5), np.arange(len(x)), x)
  os.remove(os.path.join(rec, "3_george_33.wav"))
  sf.write(os.path.join(rec, "mine.wav"), np.stack([up, 0.5 * up], 1), 16000)
  out = tmp_path / "out"
  fold = os.path.join(voices_run["workdir"], "fold0")
  code = cli.main(["generate", fold, "--recordings", rec, "--num", "5", "--out", str(out)])
  assert code == 0
  assert "5 samples of reptile adapted to 4 recordings" in capsys.readouterr().out
  samples = sorted(os.listdir(out / "samples"))
  assert samples == [f"{i}.wav" for i in range(5)]
  for f in samples:
    w, rate = sf.read(out / "samples" / f)
    assert rate == 8000 and len(w) == mg.audio.SpecConfig().num_samples
    assert np.isfinite(w).all() and 0 < np.abs(w).max() <= 1.0
  assert len(os.listdir(out / "support")) == 4
  npz = np.load(out / "samples.npz")
  assert npz["samples"].shape == (5, 64, 32, 1) and npz["waves"].shape == (5, 5952)
  rep = json.loads((out / "report.json").read_text())
  assert rep["modality"] == "audio" and rep["sample_rate"] == 8000 and rep["images"] == 4
  assert (out / "spectrograms.png").exists()


def test_audio_run_given_images_is_refused_before_compute(voices_run, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  imgs = tmp_path / "imgs"
  imgs.mkdir()
  for i in range(3):
    Image.fromarray(np.full((28, 28), 255 * (i % 2), np.uint8)).save(imgs / f"{i}.png")
  fold = os.path.join(voices_run["workdir"], "fold0")
  code = cli.main(["generate", fold, "--images", str(imgs), "--out", str(tmp_path / "o")])
  assert code == 2
  err = capsys.readouterr().err
  assert "holds images, but the run" in err and "models sound" in err
  assert not (tmp_path / "o").exists()


def test_bad_recording_is_named(voices_run, tmp_path, capsys):
  rec = _four_recordings(voices_run["fsdd"], str(tmp_path / "rec"))
  (tmp_path / "rec" / "notes.wav").write_text("not sound")
  fold = os.path.join(voices_run["workdir"], "fold0")
  code = cli.main(["generate", fold, "--recordings", rec, "--out", str(tmp_path / "o")])
  assert code == 2
  err = capsys.readouterr().err
  assert "notes.wav" in err and "not an audio file" in err and "--skip-bad" in err


def test_fold_classes_draw_supports_and_held_out_clips_from_recordings_25_to_49(fsdd_dir):
  from experiments.configs import voices_tiny  # pylint: disable=g-import-not-at-top
  from experiments.protocol import voices  # pylint: disable=g-import-not-at-top

  config = voices_tiny.get_config()
  config.data_dir = str(fsdd_dir)
  config.fold = 2
  cls = voices.fold_classes(config, "test")
  val = voices.fold_classes(config, "val")
  assert cls["speaker"] == "lucas" and val["speaker"] == "nicolas"
  assert cls["names"] == [f"lucas/{d}" for d in range(10)]
  for name, idx in cls["indices"].items():
    s, h = set(idx["support"]), set(idx["heldout"])
    assert len(s) == config.eval.k and not s & h and s | h == set(range(25, 50)), name
  assert cls["support"].shape == (10, 4, 64, 32, 1) and cls["heldout_wave"].shape == (10, 21, 5952)
  # the other speakers' clips of the digit: five speakers, never the target
  assert len(cls["others"]["3"]) == 5
  # the support clips are the recordings of those indices
  raw = voices.raw_clips(config)
  x = raw.images[raw.names.index("lucas/3")]
  np.testing.assert_array_equal(cls["support_wave"][3], x[cls["indices"]["lucas/3"]["support"]])
  # the representation is the fold's: moments of its four training speakers
  by = mg.data.fold_split(raw, 2)
  assert sorted({n.split("/")[0] for n in by["train"]}) == ["george", "jackson", "theo", "yweweler"]
  again = voices.fold_classes(config, "test")  # the same draw every time
  np.testing.assert_array_equal(again["support_wave"], cls["support_wave"])


def test_copy_baseline_shifts_the_support_in_time_and_pitch():
  from experiments.protocol import voices  # pylint: disable=g-import-not-at-top

  rate, n = 8000, 4000
  t = np.arange(n) / rate
  sup = np.stack([np.stack([np.sin(2 * np.pi * 300 * t)] * 2)]).astype(np.float32)  # [1, 2, L]
  copies = voices.copy_clips(sup, 6, seed=0, sample_rate=rate)
  assert copies.shape == (1, 6, n)
  f = np.fft.rfftfreq(n, 1 / rate)
  for w in copies[0]:
    lead = np.argmax(np.abs(w) > 1e-3)
    assert 0 <= lead <= 0.05 * rate  # delayed by at most 50 ms
    peak = f[np.argmax(np.abs(np.fft.rfft(w)))]
    assert 300 * 2 ** (-1 / 12) - 3 <= peak <= 300 * 2 ** (1 / 12) + 3  # within a semitone
  assert not np.allclose(copies[0, 0], copies[0, 2])  # each copy its own shift


def test_validation_trials_never_use_the_folds_test_speaker(fsdd_dir):
  from experiments.configs import voices_tiny  # pylint: disable=g-import-not-at-top
  from experiments.protocol import voices  # pylint: disable=g-import-not-at-top

  config = voices_tiny.get_config()
  config.data_dir = str(fsdd_dir)
  config.fold = 2  # test lucas, validation nicolas
  val = voices.fold_classes(config, "val")
  test = voices.fold_classes(config, "test")
  assert val["speaker"] == "nicolas"
  assert val["other_speakers"]["3"] == ["george", "jackson", "theo", "yweweler"]
  assert test["other_speakers"]["3"] == ["george", "jackson", "nicolas", "theo", "yweweler"]
  assert len(val["others"]["3"]) == 4 and len(test["others"]["3"]) == 5


class _FakeOracles:
  """Oracles that read a clip's embedding and labels off its first samples."""

  speakers = ["a", "b", "c"]
  digits = ["0", "1"]

  def embed(self, w):
    return np.asarray(w, np.float64)[:, :3]

  def speaker_logits(self, w):
    return np.eye(3)[np.asarray(w)[:, 3].astype(int)]

  def digit_logits(self, w):
    return np.eye(2)[np.asarray(w)[:, 4].astype(int)]


def _clips(emb, speaker, digit):
  n = len(emb)
  return np.concatenate([emb, np.full((n, 1), speaker), np.full((n, 1), digit)], 1)


def test_scores_exclude_self_in_trials_and_memorisation_and_know_their_answers():
  from experiments.protocol import voices  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  held = _clips(rng.normal(size=(6, 3)), 0, 1)  # speaker "a", digit "1"; K = 2 support
  sup = _clips(rng.normal(size=(2, 3)) + 5.0, 0, 1)
  others = [_clips(rng.normal(size=(4, 3)), s, 1) for s in (1, 2)]
  cls = {
    "digits": ["1"],
    "speaker": "a",
    "support_wave": sup[None],
    "heldout_wave": held[None],
    "others": {"1": others},
  }
  orc = _FakeOracles()
  per, t, nt = voices._scores(orc, held[None], cls, exclude_self=True)  # the real row
  cos = mg.metrics.cosine_similarity(held[:, :3], held[:, :3])
  want = [(cos[i].sum() - cos[i, i]) / 5 for i in range(6)]  # never the clip itself
  np.testing.assert_allclose(t[0], want)
  want_nt = np.stack(
    [mg.metrics.cosine_similarity(held[:, :3], o[:, :3]).mean(1) for o in others], 1
  )
  np.testing.assert_allclose(nt[0], want_nt.ravel())
  assert per["voice_fidelity"][0] == 1.0 and per["digit_fidelity"][0] == 1.0
  np.testing.assert_allclose(per["voice_margin"][0], np.mean(want) - want_nt.mean())
  # memorisation: clips 2.. against the K = 2 support and the first 2 held-out clips
  e = held[:, :3] / np.sqrt(np.mean(held[:, :3] ** 2))
  s = sup[:, :3] / np.sqrt(np.mean(held[:, :3] ** 2))
  d = lambda x, y: np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1)).min(1).mean()
  np.testing.assert_allclose(per["memorisation"][0], d(e[2:], s) / d(e[2:], e[:2]), rtol=1e-6)
  # a generated row: every clip against every held-out clip, wrong labels counted
  gen = _clips(rng.normal(size=(4, 3)), 1, 0)
  per_g, t_g, _ = voices._scores(orc, gen[None], cls, exclude_self=False)
  np.testing.assert_allclose(t_g[0], mg.metrics.cosine_similarity(gen[:, :3], held[:, :3]).mean(1))
  assert per_g["voice_fidelity"][0] == 0.0 and per_g["digit_fidelity"][0] == 0.0
