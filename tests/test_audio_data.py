"""Recordings as ClassDataset: FSDD's folder, a folder of one's own recordings, TFDS spoken_digit,
leave-speakers-out folds, and load_split's spectrograms (moments from the training voices).

Synthetic WAV files (pure tones, one pitch per "speaker") written with soundfile; the real FSDD
copy is used only by the last test, when found.
"""

import json
import os
import re
import shutil
import struct

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from metagan_jax import data  # noqa: E402
from metagan_jax.audio import SpecConfig, SpecStats, Spectrogram, log_mel_batched  # noqa: E402
from metagan_jax.data import audio as daudio  # noqa: E402

# 16 mel bins x 16 frames at 8 kHz: 960-sample clips, 128-sample window.
SMALL = SpecConfig(n_fft=128, hop=64, n_mels=16, frames=16)
RATE = 8000
SPEAKERS = {"alice": 180.0, "bob": 270.0, "carol": 400.0, "dave": 600.0}  # pitch in Hz
DIGITS = ("0", "1")
N_CLIPS = 12  # indices 0..11: sorted file names put 10 and 11 before 2


def _tone(freq, n, rate=RATE, amp=0.3):
  return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _clip_len(index):
  """Samples of clip ``index`` at 8 kHz: each index its own length (all shorter than 960)."""
  return 300 + 50 * index


def _pitch(speaker, digit, scale=1.0):
  return SPEAKERS[speaker] * (1 + 0.5 * int(digit)) * scale


def _write(path, wave, rate=RATE, subtype="PCM_16"):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), wave, rate, subtype=subtype)
  return path


def _write_speaker(root, speaker, scale=1.0):
  for digit in DIGITS:
    for i in range(N_CLIPS):
      wave = _tone(_pitch(speaker, digit, scale), _clip_len(i))
      _write(root / "recordings" / f"{digit}_{speaker}_{i}.wav", wave)


def _voiced_len(clip):
  nz = np.nonzero(np.abs(clip) > 0)[0]
  return 0 if not len(nz) else int(nz[-1] + 1)


def _peak_hz(wave, rate):
  mag = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=8 * len(wave)))
  return float(np.fft.rfftfreq(8 * len(wave), 1 / rate)[mag.argmax()])


def _expected_clip(path, spec=SMALL):
  wave, rate = sf.read(str(path), dtype="float32")
  return daudio.prepare_clip(wave, rate, spec, "x")


@pytest.fixture(scope="module")
def fsdd_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("fsdd")
  for speaker in SPEAKERS:
    _write_speaker(root, speaker)
  (root / "recordings" / ".hidden").write_text("ignored")
  return root


@pytest.fixture
def fsdd_copy(fsdd_dir, tmp_path):
  return shutil.copytree(fsdd_dir, tmp_path / "fsdd")


# --- FSDD's folder -------------------------------------------------------------------------


def test_load_fsdd_classes_groups_and_index_order(fsdd_dir):
  d = data.load_fsdd(fsdd_dir, spec=SMALL, verbose=False)
  assert d.names == [f"{s}/{g}" for s in sorted(SPEAKERS) for g in DIGITS]
  assert d.groups == [n.split("/")[0] for n in d.names]
  assert d.spectrogram is None and d.modality == "image"  # raw clips until to_spectrograms
  for name, clips in zip(d.names, d.images):
    speaker, digit = name.split("/")
    assert clips.shape == (N_CLIPS, SMALL.num_samples) and clips.dtype == np.float32
    for i in range(N_CLIPS):
      path = fsdd_dir / "recordings" / f"{digit}_{speaker}_{i}.wav"
      np.testing.assert_array_equal(clips[i], _expected_clip(path))
    lengths = [_voiced_len(c) for c in clips]
    assert lengths == sorted(lengths) and len(set(lengths)) == N_CLIPS, lengths  # index order
    assert abs(_peak_hz(clips[-1], RATE) - _pitch(speaker, digit)) < 10


def test_load_fsdd_keeps_only_the_given_speakers(fsdd_dir, capsys):
  d = data.load_fsdd(fsdd_dir, spec=SMALL, speakers=["bob", "dave"])
  assert d.names == ["bob/0", "bob/1", "dave/0", "dave/1"]
  assert "FSDD: 4 classes (speaker/digit), 48 clips" in capsys.readouterr().err
  with pytest.raises(data.DataError, match=r"no recordings of speakers \['zed'\]"):
    data.load_fsdd(fsdd_dir, spec=SMALL, speakers=["zed"], verbose=False)


def test_load_fsdd_names_a_file_not_named_like_fsdd(fsdd_copy):
  (fsdd_copy / "recordings" / "notes.txt").write_text("hi")
  with pytest.raises(data.DataError, match=r"not named \{digit\}_\{speaker\}.*notes\.txt"):
    data.load_fsdd(fsdd_copy, spec=SMALL, verbose=False)


def test_explicit_fsdd_dir_is_never_replaced_by_another_copy(fsdd_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("METAGAN_FSDD_DIR", str(fsdd_dir))
  with pytest.raises(data.DataError, match="has no recordings/ sub-folder"):
    daudio.find_fsdd(tmp_path / "typo")


# --- leave-speakers-out folds --------------------------------------------------------------


def test_fold_split_leaves_speakers_out(fsdd_dir):
  d = data.load_fsdd(fsdd_dir, spec=SMALL, verbose=False)
  speakers = sorted(SPEAKERS)
  tested, validated = [], []
  for f in range(len(speakers)):
    by = data.fold_split(d, f)
    roles = {s: {g for n, g in zip(d.names, d.groups) if n in by[s]} for s in by}
    assert roles["test"] == {speakers[f]} and roles["val"] == {speakers[(f + 1) % 4]}
    assert not roles["train"] & roles["val"] and not roles["train"] & roles["test"]
    assert roles["train"] | roles["val"] | roles["test"] == set(speakers)
    assert sorted(by["train"] + by["val"] + by["test"]) == sorted(d.names)  # every class once
    tested += roles["test"]
    validated += roles["val"]
  assert sorted(tested) == speakers and sorted(validated) == speakers  # each role once per voice
  by = data.fold_split(d, 0, order=["dave", "carol", "bob", "alice"])
  assert {n.split("/")[0] for n in by["test"]} == {"dave"}
  assert {n.split("/")[0] for n in by["val"]} == {"carol"}


@pytest.mark.parametrize("fold", [4, -1, 1.5, "0"])
def test_fold_out_of_range_is_a_data_error(fsdd_dir, fold):
  d = data.load_fsdd(fsdd_dir, spec=SMALL, verbose=False)
  with pytest.raises(data.DataError, match=r"fold must be an int in \[0, 4\) for the 4 groups"):
    data.fold_split(d, fold)


def test_fold_errors_through_load_split(fsdd_dir):
  with pytest.raises(data.DataError, match=r"fold must be an int in \[0, 4\) .*; got 4\."):
    data.load_split("fsdd", "test", fold=4, data_dir=fsdd_dir, spec=SMALL, verbose=False)
  with pytest.raises(data.DataError, match="fold=0 splits recordings by speaker"):
    data.load_split("omniglot", "train", fold=0)
  d = data.load_fsdd(fsdd_dir, spec=SMALL, speakers=["alice", "bob"], verbose=False)
  with pytest.raises(data.DataError, match="folds need at least 3 groups"):
    data.fold_split(d, 0)
  with pytest.raises(data.DataError, match="is not the groups"):
    data.fold_split(d, 0, order=["alice", "carol"])
  with pytest.raises(data.DataError, match=r"fewer than 13 clips \(K\)"):
    data.load_split("fsdd", "test", fold=0, data_dir=fsdd_dir, spec=SMALL, min_clips=13)


def test_load_split_folds_give_the_speakers_of_their_roles(fsdd_dir, tmp_path):
  for f, test_speaker in enumerate(sorted(SPEAKERS)):
    run = tmp_path / f"run{f}"
    train = data.load_split(
      "fsdd", "train", fold=f, data_dir=fsdd_dir, spec=SMALL, run_dir=run, verbose=False
    )
    written = data.read_split(run)
    assert train.names == written["train"]
    assert test_speaker not in train.groups and len(set(train.groups)) == 2
    assert {n.split("/")[0] for n in written["test"]} == {test_speaker}
    doc = json.loads((run / "split.json").read_text())
    assert doc["fold"] == f and doc["rule"] == "leave speakers out"
    sg = Spectrogram.from_dict(doc["spectrogram"])
    np.testing.assert_array_equal(sg.stats.mean, train.spectrogram.stats.mean)
    assert sg.spec == SMALL
  assert train.image_shape == SMALL.image_shape
  x = np.concatenate(train.images)
  assert x.shape == (4 * N_CLIPS, 16, 16, 1) and x.dtype == np.float32
  assert -1 <= x.min() and x.max() <= 1 and x.std() > 0.1


# --- moments from the meta-training voices only -------------------------------------------


def _train_stats(root, fold):
  full = data.load_fsdd(root, spec=SMALL, verbose=False)
  train = full.select(data.fold_split(full, fold)["train"])
  return SpecStats.fit(log_mel_batched(np.concatenate(train.images), SMALL)), full


def test_stats_come_from_the_training_speakers_only(fsdd_copy):
  fold = 1  # test bob, validate on carol, train on alice and dave
  load = lambda: data.load_split(  # noqa: E731
    "fsdd", "test", fold=fold, data_dir=fsdd_copy, spec=SMALL, verbose=False
  )
  test = load()
  assert test.modality == "audio" and test.spectrogram.spec == SMALL
  assert set(test.groups) == {"bob"}
  want, full = _train_stats(fsdd_copy, fold)
  got = test.spectrogram.stats
  np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got.std, want.std, rtol=1e-6, atol=1e-6)
  everyone = SpecStats.fit(log_mel_batched(np.concatenate(full.images), SMALL))
  assert np.abs(everyone.mean - got.mean).max() > 0.1  # fitting on all voices would differ
  # the test clips are encoded with those moments
  bob = full.select([n for n in full.names if n.startswith("bob/")])
  np.testing.assert_allclose(
    np.concatenate(test.images), test.spectrogram.encode(np.concatenate(bob.images)), atol=1e-6
  )

  # new voices for the test and validation speakers: the same moments, other test images
  _write_speaker(fsdd_copy, "bob", scale=1.7)
  _write_speaker(fsdd_copy, "carol", scale=0.6)
  test2 = load()
  np.testing.assert_array_equal(test2.spectrogram.stats.mean, got.mean)
  np.testing.assert_array_equal(test2.spectrogram.stats.std, got.std)
  assert np.abs(np.concatenate(test2.images) - np.concatenate(test.images)).max() > 0.5

  # a new voice for a training speaker does move them (the check above can fail)
  _write_speaker(fsdd_copy, "alice", scale=1.3)
  assert np.abs(load().spectrogram.stats.mean - got.mean).max() > 0.05


def test_a_given_spectrogram_replaces_the_fitted_moments(fsdd_dir):
  stats = SpecStats(np.full(16, -2.0, np.float32), np.full(16, 0.5, np.float32))
  sg = Spectrogram(SMALL, stats)
  d = data.load_split(
    "fsdd", "val", fold=0, data_dir=fsdd_dir, spectrogram=sg, spec=SpecConfig(), verbose=False
  )
  assert d.spectrogram is sg and d.image_shape == (16, 16, 1)
  full = data.load_fsdd(fsdd_dir, spec=SMALL, speakers=["bob"], verbose=False)
  np.testing.assert_allclose(
    np.concatenate(d.images), sg.encode(np.concatenate(full.images)), atol=1e-6
  )


# --- prepare_clip --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
def test_resampling_keeps_a_tones_frequency_and_duration(rate):
  spec = SpecConfig()
  wave = _tone(700.0, rate // 2, rate=rate)  # 0.5 s
  clip = daudio.prepare_clip(wave, rate, spec, "tone")
  assert clip.shape == (spec.num_samples,) and clip.dtype == np.float32
  voiced = _voiced_len(clip)
  assert abs(voiced - 4000) <= spec.n_fft // 4 + 2, voiced  # 0.5 s at 8 kHz, less a trim hop
  assert abs(_peak_hz(clip[:voiced], spec.sample_rate) - 700.0) < 5


def test_leading_and_trailing_silence_is_trimmed():
  silence = np.zeros(1000, np.float32)
  wave = np.concatenate([silence, _tone(500.0, 2000), silence[:700]])
  for spec in (SMALL, SpecConfig()):
    clip = daudio.prepare_clip(wave, RATE, spec, "x")
    on = np.nonzero(np.abs(clip) > 1e-3)[0]
    assert on[0] < spec.n_fft, on[0]  # of 1000 silent samples, less than a window is left
  # the default clip (5952 samples) holds all of it: the sound, then only the padding
  assert 2000 - 10 <= on[-1] - on[0] + 1 <= 2000 + 2 * spec.n_fft
  assert np.abs(clip[on[-1] + 1 :]).max(initial=0.0) <= 1e-3
  untrimmed = np.concatenate([silence, _tone(500.0, 2000)]) * 0.1
  assert np.nonzero(np.abs(untrimmed) > 1e-3)[0][0] >= 1000  # (the check above can fail)


def test_loudness_is_normalised():
  spec = SpecConfig()
  quiet = daudio.prepare_clip(_tone(300.0, 8000, amp=0.02), RATE, spec, "quiet")
  loud = daudio.prepare_clip(_tone(300.0, 8000, amp=0.9), RATE, spec, "loud")
  target = 10 ** (-23 / 20)
  for clip in (quiet, loud):
    assert np.sqrt(np.mean(clip**2)) == pytest.approx(target, rel=2e-2)  # all of it is voiced
  np.testing.assert_allclose(quiet, loud, atol=1e-5)


def test_loudness_is_normalised_across_files(tmp_path):
  _write(tmp_path / "spk" / "a.wav", _tone(300.0, 2000, amp=0.03))
  _write(tmp_path / "spk" / "b.wav", _tone(300.0, 2000, amp=0.8))
  d = data.load_audio_folder(tmp_path / "spk", spec=SMALL, verbose=False)
  assert d.names == ["spk"] and d.images[0].shape == (2, SMALL.num_samples)
  a, b = d.images[0]
  ra, rb = np.sqrt(np.mean(a**2)), np.sqrt(np.mean(b**2))
  assert ra == pytest.approx(rb, rel=1e-2) and ra == pytest.approx(10 ** (-23 / 20), rel=5e-2)


def test_stereo_is_mixed_down_with_a_message(tmp_path, capsys):
  left, right = _tone(300.0, 2000), 0.5 * _tone(300.0, 2000)
  path = _write(tmp_path / "cls" / "stereo.wav", np.stack([left, right], 1), subtype="FLOAT")
  _write(tmp_path / "cls" / "mono.wav", left)
  wave, rate = data.read_audio(path, verbose=False)
  assert rate == RATE and wave.shape == (2000,)
  np.testing.assert_allclose(wave, 0.75 * left, atol=1e-6)
  assert capsys.readouterr().err == ""
  d = data.load_audio_folder(tmp_path / "cls", spec=SMALL)
  err = capsys.readouterr().err
  assert "stereo.wav: 2 channels mixed down to mono" in err and "mono.wav:" not in err
  np.testing.assert_allclose(d.images[0][0], d.images[0][1], atol=1e-3)  # same tone, same level


def test_non_finite_samples_are_a_data_error():
  with pytest.raises(data.DataError, match="my clip: holds NaN or inf"):
    daudio.prepare_clip(np.array([0.1, np.nan] * 200, np.float32), RATE, SMALL, "my clip")


# --- each bad file: one DataError that names it -------------------------------------------


def _riff_wave(path, format_tag):
  payload = (1000 * np.sin(np.arange(800) / 5)).astype("<i2").tobytes()
  fmt = struct.pack("<HHIIHH", format_tag, 1, RATE, 2 * RATE, 2, 16)
  body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
  body += b"data" + struct.pack("<I", len(payload)) + payload
  path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def not_audio(path):
  path.write_text("this is a text file, not a recording\n" * 20)
  return "is not an audio file soundfile can read"


def empty_file(path):
  path.write_bytes(b"")
  return r"is empty \(0 bytes\)"


def silent_file(path):
  _write(path, np.zeros(4000, np.float32))
  return r"silent \(peak .* dBFS, below -60 dBFS\)"


def too_short(path):
  _write(path, _tone(400.0, 100))
  return r"\d+ ms of sound after trimming silence, shorter than one STFT window \(128 samples"


def unknown_format(path):
  _riff_wave(path, 0x1234)
  return r"sample format soundfile cannot read \(format tag 0x1234\); convert it to 16-bit PCM"


BAD_FILES = [not_audio, empty_file, silent_file, too_short, unknown_format]


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda f: f.__name__)
def test_bad_file_in_an_audio_folder(tmp_path, make):
  _write(tmp_path / "spk" / "good.wav", _tone(300.0, 2000))
  bad = tmp_path / "spk" / "odd.wav"
  match = make(bad)
  with pytest.raises(data.DataError, match=re.escape(repr(str(bad)))) as e:
    data.load_audio_folder(tmp_path, spec=SMALL, verbose=False)
  assert re.search(match, str(e.value)), str(e.value)
  with pytest.raises(data.DataError, match=match):
    data.load_split("audio_folder", "all", data_dir=tmp_path, spec=SMALL, verbose=False)


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda f: f.__name__)
def test_bad_file_in_fsdd(fsdd_copy, make):
  bad = fsdd_copy / "recordings" / "1_carol_3.wav"
  match = make(bad)
  with pytest.raises(data.DataError, match=re.escape(repr(str(bad)))) as e:
    data.load_split("fsdd", "train", fold=0, data_dir=fsdd_copy, spec=SMALL, verbose=False)
  assert re.search(match, str(e.value)), str(e.value)


def test_read_audio_reads_a_valid_riff_header_written_by_hand(tmp_path):
  path = tmp_path / "pcm.wav"
  _riff_wave(path, 0x0001)  # the same header with PCM's tag: readable
  wave, rate = data.read_audio(path)
  assert rate == RATE and wave.shape == (800,)
  np.testing.assert_allclose(wave, (1000 * np.sin(np.arange(800) / 5)).astype(np.int16) / 32768)


def test_a_class_with_fewer_than_k_recordings(tmp_path):
  root = tmp_path / "voices"
  for i in range(3):
    _write(root / "ann" / "hello" / f"{i}.wav", _tone(200.0 + 10 * i, 1500))
  for i in range(2):
    _write(root / "ben" / "hello" / f"{i}.wav", _tone(300.0, 1500))
  (root / "ben" / "hello" / "notes.txt").write_text("x")
  folder = re.escape(repr(str(root / "ben" / "hello")))
  msg = folder + r" has 2 recordings \(not read: \['notes.txt'\].*fewer than the 3 needed \(K\)"
  with pytest.raises(data.DataError, match=msg):
    data.load_audio_folder(root, spec=SMALL, min_clips=3, verbose=False)
  with pytest.raises(data.DataError, match=msg):
    data.load_split("audio_folder", "all", data_dir=root, spec=SMALL, min_clips=3, verbose=False)
  d = data.load_audio_folder(root, spec=SMALL, min_clips=2, verbose=False)
  assert d.counts.tolist() == [3, 2]


def test_audio_folder_layouts(tmp_path):
  root = tmp_path / "voices"
  for s, speaker in enumerate(("ann", "ben", "cat")):
    for w, word in enumerate(("hi", "yes")):
      for i in range(2):
        _write(root / speaker / word / f"{i}.wav", _tone(200.0 * (1 + s) + 50 * w, 1500))
  d = data.load_audio_folder(root, spec=SMALL, verbose=False)
  assert d.names == ["ann/hi", "ann/yes", "ben/hi", "ben/yes", "cat/hi", "cat/yes"]
  assert d.groups == ["ann", "ann", "ben", "ben", "cat", "cat"]
  assert all(x.shape == (2, SMALL.num_samples) for x in d.images)
  assert abs(_peak_hz(d.images[2][0], RATE) - 400.0) < 10  # ben/hi: ben's pitch

  test = data.load_split("audio_folder", "test", fold=0, data_dir=root, spec=SMALL, verbose=False)
  assert test.names == ["ann/hi", "ann/yes"] and test.image_shape == (16, 16, 1)
  everything = data.load_split("audio_folder", "all", data_dir=root, spec=SMALL, verbose=False)
  assert len(everything) == 6 and everything.modality == "audio"
  x = np.concatenate(everything.images)
  assert x.shape == (12, 16, 16, 1) and -1 <= x.min() and x.max() <= 1

  flat = tmp_path / "flat"  # root/<class>/*.wav: each class its own group
  for c in ("a", "b"):
    _write(flat / c / "0.wav", _tone(300.0, 1500))
  f = data.load_audio_folder(flat, spec=SMALL, verbose=False)
  assert f.names == ["a", "b"] and f.groups == ["a", "b"]
  one = data.load_audio_folder(flat / "a", spec=SMALL, verbose=False)  # files only: one class
  assert one.names == ["a"] and one.images[0].shape == (1, SMALL.num_samples)


def test_audio_folder_errors(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_audio_folder(tmp_path / "missing")
  with pytest.raises(data.DataError, match="needs data_dir="):
    data.load_split("audio_folder", "all", spec=SMALL)
  _write(tmp_path / "mixed" / "loose.wav", _tone(300.0, 1500))
  _write(tmp_path / "mixed" / "cls" / "0.wav", _tone(300.0, 1500))
  with pytest.raises(data.DataError, match="mixes recordings and sub-folders"):
    data.load_audio_folder(tmp_path / "mixed", spec=SMALL)


# --- TFDS spoken_digit (mocked) ------------------------------------------------------------


def _mock_spoken_digit(tfds, names_and_pitches, length=2000):
  tf = pytest.importorskip("tensorflow")
  audio = np.stack(
    [np.rint(_tone(p, length, amp=0.25) * 32767).astype(np.int64) for _, p in names_and_pitches]
  )
  ex = {
    "audio": audio,
    "audio/filename": np.array([n.encode() for n, _ in names_and_pitches]),
    "label": np.array([int(n[0]) if n[0].isdigit() else 0 for n, _ in names_and_pitches]),
  }

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, split, decoders, read_config, shuffle_files
    return tf.data.Dataset.from_tensor_slices(ex)

  return tfds.testing.mock_data(as_dataset_fn=as_dataset), audio


TFDS_EXAMPLES = [
  ("3_theo_7.wav", 300.0),
  ("3_theo_2.wav", 320.0),
  ("4_theo_0.wav", 340.0),
  ("3_lucas_1.wav", 500.0),
  ("4_lucas_0.wav", 520.0),
  ("3_george_0.wav", 700.0),
  ("4_george_5.wav", 720.0),
]


def test_tfds_spoken_digit_names_groups_and_clips(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  mock, audio = _mock_spoken_digit(tfds, TFDS_EXAMPLES)
  with mock:
    d = data.load_tfds_spoken_digit(data_dir=tmp_path, download=True, spec=SMALL, verbose=False)
  assert d.names == ["george/3", "george/4", "lucas/3", "lucas/4", "theo/3", "theo/4"]
  assert d.groups == ["george", "george", "lucas", "lucas", "theo", "theo"]
  assert d.counts.tolist() == [1, 1, 1, 1, 2, 1]
  index = {n: i for i, (n, _) in enumerate(TFDS_EXAMPLES)}
  theo3 = d.images[d.names.index("theo/3")]
  for clip, fname in zip(theo3, ("3_theo_2.wav", "3_theo_7.wav")):  # by index, not file order
    want = daudio.prepare_clip(audio[index[fname]] / 32768.0, 8000, SMALL, "x")
    np.testing.assert_allclose(clip, want, atol=1e-6)
  assert abs(_peak_hz(theo3[0], RATE) - 320.0) < 10


def test_tfds_spoken_digit_through_load_split(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  mock, _ = _mock_spoken_digit(tfds, TFDS_EXAMPLES)
  with mock:
    test = data.load_split(
      "tfds:spoken_digit", "test", fold=0, data_dir=tmp_path, download=True, spec=SMALL
    )
  assert test.names == ["george/3", "george/4"] and test.modality == "audio"
  assert test.images[0].shape == (1, 16, 16, 1)


def test_tfds_spoken_digit_badly_named_example(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  mock, _ = _mock_spoken_digit(tfds, TFDS_EXAMPLES[:2] + [("hello.wav", 400.0)])
  with mock, pytest.raises(data.DataError, match=r"example 'hello.wav' is not named \{digit\}_"):
    data.load_tfds_spoken_digit(data_dir=tmp_path, download=True, spec=SMALL, verbose=False)


def test_tfds_spoken_digit_silent_example_names_it(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  mock, _ = _mock_spoken_digit(tfds, TFDS_EXAMPLES[:2] + [("5_theo_9.wav", 0.0)])
  with mock, pytest.raises(data.DataError, match=r"example '5_theo_9.wav': silent"):
    data.load_tfds_spoken_digit(data_dir=tmp_path, download=True, spec=SMALL, verbose=False)


# --- the real FSDD, when found -------------------------------------------------------------


@pytest.fixture(scope="module")
def real_fsdd():
  path = data.find_fsdd(required=False)
  if path is None:
    if os.environ.get("CI"):
      pytest.fail("CI must have the FSDD copy at ../shared/data/fsdd (or $METAGAN_FSDD_DIR).")
    pytest.skip("FSDD not found")
  return path


def test_real_fsdd_folds(real_fsdd):
  got = {
    s: data.load_split("fsdd", s, fold=0, data_dir=real_fsdd, verbose=False)
    for s in ("train", "val", "test")
  }
  assert [len(got[s]) for s in ("train", "val", "test")] == [40, 10, 10]
  assert [len(set(got[s].groups)) for s in ("train", "val", "test")] == [4, 1, 1]
  assert set(got["test"].groups) == {"george"} and set(got["val"].groups) == {"jackson"}
  for s, d in got.items():
    assert d.image_shape == (64, 32, 1) and d.counts.tolist() == [50] * len(d), s
    x = np.concatenate(d.images)
    assert x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1, s
    np.testing.assert_array_equal(d.spectrogram.stats.mean, got["train"].spectrogram.stats.mean)
  assert np.concatenate(got["train"].images).std() > 0.2


# --- more voices: speed-shifted copies of the training speakers ------------------------------


def test_shifted_voices_are_new_classes_of_the_same_speaker_at_the_shifted_pitch(fsdd_dir):
  d = data.load_fsdd(fsdd_dir, spec=SMALL, speakers=["alice"], verbose=False)
  out = daudio.shift_voices(d, [-12, 12])
  assert len(out) == 3 * len(d)
  assert out.names[len(d)] == "alice/0/pitch-12" and out.names[-1] == "alice/1/pitch+12"
  assert set(out.groups) == {"alice"}  # splits by speaker stay disjoint
  clip, up = d.images[0][11], out.images[2 * len(d)][11]  # one octave up: half as long
  f = np.fft.rfftfreq(len(clip), 1 / RATE)
  peak = lambda w: f[np.argmax(np.abs(np.fft.rfft(w)))]
  assert abs(peak(up) - 2 * peak(clip)) < 2 * RATE / len(clip)
  assert _voiced_len(up) == pytest.approx(_voiced_len(clip) / 2, abs=2)
  with pytest.raises(data.DataError, match="0 semitones"):
    daudio.shift_voices(d, [0])


def test_voice_shifts_only_for_the_training_split(fsdd_dir):
  kw = dict(data_dir=fsdd_dir, spec=SMALL, fold=0, verbose=False)
  plain = data.load_split("fsdd", "train", **kw)
  more = data.load_split("fsdd", "train", voice_shifts=(-2, 3), **kw)
  assert len(more) == 3 * len(plain) and sorted(set(more.groups)) == sorted(set(plain.groups))
  # the moments stay those of the unshifted training voices
  np.testing.assert_array_equal(more.spectrogram.stats.mean, plain.spectrogram.stats.mean)
  np.testing.assert_array_equal(more.images[0], plain.images[0])
  with pytest.raises(data.DataError, match="meta-training only"):
    data.load_split("fsdd", "test", voice_shifts=(2,), **kw)
