"""metagan_jax.audio (log-mel spectrogram, its normalisation and Griffin-Lim inverse), the
speaker-verification metrics and the specgan pair."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metagan_jax as mg
from metagan_jax import metrics
from metagan_jax.audio import (
  SpecConfig,
  SpecStats,
  Spectrogram,
  griffin_lim,
  istft,
  log_mel,
  log_mel_batched,
  mel_filterbank,
  mel_to_linear,
  stft,
)

# 16 mel bins x 16 frames at 8 kHz: 960-sample clips (0.12 s), quick to compile.
SMALL = SpecConfig(n_fft=128, hop=64, n_mels=16, frames=16)


def _tones(freqs, spec, amp=0.5):
  t = np.arange(spec.num_samples) / spec.sample_rate
  return np.stack([amp * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def _noise(n, spec, seed=0):
  return (0.1 * np.random.default_rng(seed).standard_normal((n, spec.num_samples))).astype(
    np.float32
  )


def _peak_hz(wave, rate):
  mag = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return float(np.fft.rfftfreq(len(wave), 1 / rate)[mag.argmax()])


# --- SpecConfig, STFT, log-mel -------------------------------------------------------------


def test_small_spec_is_valid_and_its_derived_sizes():
  assert SMALL.num_samples == 64 * 15
  assert SMALL.image_shape == (16, 16, 1)
  assert SMALL.seconds == pytest.approx(960 / 8000)
  default = SpecConfig()
  assert default.num_samples == 192 * 31 and default.image_shape == (64, 32, 1)
  assert SpecConfig(**default.to_dict()) == default


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(n_fft=0), "n_fft must be a positive int"),
    (dict(hop=1.5), "hop must be a positive int"),
    (dict(n_fft=128, hop=129), "hop=129 exceeds n_fft=128"),
    (dict(fmin=100.0, fmax=5000.0), "fmin < fmax <= sample_rate / 2"),
    (dict(fmin=3000.0, fmax=2000.0), "fmin < fmax"),
  ],
)
def test_spec_config_rejects_bad_settings(kw, match):
  with pytest.raises(ValueError, match=match):
    SpecConfig(**kw)


def test_spec_config_rejects_fmin_above_nyquist_when_fmax_defaults():
  with pytest.raises(ValueError, match="fmin"):
    SpecConfig(fmin=5000.0)


def test_stft_and_log_mel_shapes():
  x = _noise(3, SMALL)
  s = stft(x, SMALL)
  assert s.shape == (3, SMALL.n_fft // 2 + 1, SMALL.frames) and jnp.iscomplexobj(s)
  lm = log_mel(x, SMALL)
  assert lm.shape == (3, SMALL.n_mels, SMALL.frames) and lm.dtype == jnp.float32
  assert float(lm.min()) >= np.log(SMALL.floor) - 1e-6
  # silence is the floor, exactly
  np.testing.assert_allclose(
    log_mel(np.zeros((1, SMALL.num_samples)), SMALL), np.log(SMALL.floor), rtol=1e-6
  )
  np.testing.assert_allclose(log_mel_batched(x, SMALL, batch=2), lm, rtol=1e-5, atol=1e-5)


def test_stft_frame_is_the_windowed_fft_of_the_centred_frame():
  x = _noise(1, SMALL, seed=3)
  s = np.asarray(stft(x, SMALL))
  win = np.hanning(SMALL.n_fft + 1)[:-1]
  t = 5  # frame t is centred on sample t * hop
  start = t * SMALL.hop - SMALL.n_fft // 2
  want = np.fft.rfft(x[0, start : start + SMALL.n_fft] * win)
  np.testing.assert_allclose(s[0, :, t], want, atol=1e-4)


def test_log_mel_batched_rejects_clips_of_the_wrong_length():
  with pytest.raises(ValueError, match=r"needs clips \[N, 960\]"):
    log_mel_batched(np.zeros((2, 900), np.float32), SMALL)


@pytest.mark.parametrize("spec", [SMALL, SpecConfig()], ids=["small", "default"])
def test_istft_inverts_stft(spec):
  x = _noise(2, spec, seed=1)
  y = np.asarray(istft(stft(x, spec), spec, spec.num_samples))
  assert y.shape == x.shape
  interior = slice(spec.n_fft, -spec.n_fft)
  np.testing.assert_allclose(y[:, interior], x[:, interior], atol=1e-4)


def test_odd_n_fft_is_rejected():
  with pytest.raises(ValueError, match="n_fft=127 is odd"):
    SpecConfig(n_fft=127, hop=64, n_mels=16, frames=16)


@pytest.mark.parametrize(
  "spec",
  [
    SMALL,
    SpecConfig(),
    SpecConfig(sample_rate=16000, n_fft=512, hop=128, n_mels=40, fmin=300.0, fmax=7000.0),
  ],
  ids=["small", "default", "16k-range"],
)
def test_mel_filterbank_matches_librosa(spec):
  librosa = pytest.importorskip("librosa")
  want = librosa.filters.mel(
    sr=spec.sample_rate,
    n_fft=spec.n_fft,
    n_mels=spec.n_mels,
    fmin=spec.fmin,
    fmax=spec.fmax or spec.sample_rate / 2,
    htk=False,
    norm="slaney",
  )
  got = mel_filterbank(spec)
  assert got.shape == (spec.n_mels, spec.n_fft // 2 + 1) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_mel_filterbank_rejects_empty_filters():
  with pytest.raises(ValueError, match="cover no FFT bin"):
    mel_filterbank(SpecConfig(n_fft=32, hop=16, n_mels=64))


def test_mel_to_linear_maps_silence_to_zero_and_a_tone_to_its_band():
  silence = jnp.full((1, SMALL.n_mels, SMALL.frames), np.log(SMALL.floor))
  np.testing.assert_array_equal(mel_to_linear(silence, SMALL), 0.0)
  tone = _tones([1000.0], SMALL)
  lin = np.asarray(mel_to_linear(log_mel(tone, SMALL), SMALL))
  assert lin.shape == (1, SMALL.n_fft // 2 + 1, SMALL.frames) and lin.min() >= 0
  bin_hz = SMALL.sample_rate / SMALL.n_fft
  peak = lin[0, :, SMALL.frames // 2].argmax() * bin_hz
  assert abs(peak - 1000.0) <= 2 * bin_hz


# --- SpecStats and Spectrogram -------------------------------------------------------------


def test_spec_stats_fit_is_per_bin_mean_and_std():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 4, 7)) * np.array([1.0, 2.0, 0.5, 0.0])[:, None] + np.arange(4)[:, None]
  stats = SpecStats.fit(x)
  assert stats.mean.shape == stats.std.shape == (4,) and stats.mean.dtype == np.float32
  np.testing.assert_allclose(stats.mean, x.transpose(1, 0, 2).reshape(4, -1).mean(1), rtol=1e-6)
  want_std = x.transpose(1, 0, 2).reshape(4, -1).std(1)
  np.testing.assert_allclose(stats.std[:3], want_std[:3], rtol=1e-6)
  assert stats.std[3] == pytest.approx(1e-3)  # a constant bin: floored, never 0
  with pytest.raises(ValueError, match="N >= 1"):
    SpecStats.fit(np.zeros((0, 4, 7)))
  with pytest.raises(ValueError, match=r"\[N, n_mels, frames\]"):
    SpecStats.fit(np.zeros((4, 7)))


def test_spec_stats_normalise_and_denormalise():
  lm = np.asarray(log_mel(np.concatenate([_noise(4, SMALL), _tones([300, 900], SMALL)]), SMALL))
  stats = SpecStats.fit(lm[:4])
  x = stats.normalise(lm)
  assert x.shape == (6, SMALL.n_mels, SMALL.frames, 1) and x.dtype == np.float32
  assert x.min() >= -1 and x.max() <= 1
  z = (lm - stats.mean[:, None]) / (3 * stats.std[:, None])
  clipped = np.abs(z) >= 1
  assert clipped.any() and not clipped.all()  # the tones fall outside the noise's moments
  np.testing.assert_allclose(x[..., 0][~clipped], z[~clipped], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(x[..., 0][clipped], np.sign(z[clipped]))
  back = np.asarray(stats.denormalise(x))
  assert back.shape == lm.shape
  np.testing.assert_allclose(back[~clipped], lm[~clipped], rtol=1e-5, atol=1e-4)


def test_spec_stats_and_spectrogram_dict_round_trip():
  stats = SpecStats.fit(log_mel(_noise(3, SMALL), SMALL))
  d = json.loads(json.dumps(stats.to_dict()))  # JSON-serialisable
  again = SpecStats.from_dict(d)
  np.testing.assert_array_equal(again.mean, stats.mean)
  np.testing.assert_array_equal(again.std, stats.std)
  assert again.mean.dtype == np.float32

  sg = Spectrogram(SMALL, stats)
  sg2 = Spectrogram.from_dict(json.loads(json.dumps(sg.to_dict())))
  assert sg2.spec == SMALL
  np.testing.assert_array_equal(sg2.stats.mean, stats.mean)
  np.testing.assert_array_equal(sg2.stats.std, stats.std)
  w = _tones([500.0], SMALL)
  np.testing.assert_array_equal(sg2.encode(w), sg.encode(w))


def test_spectrogram_encode_decode_shapes():
  waves = np.concatenate([_noise(3, SMALL), _tones([400, 800], SMALL)])
  sg = Spectrogram(SMALL, SpecStats.fit(log_mel(waves, SMALL)))
  x = sg.encode(waves)
  assert x.shape == (5, 16, 16, 1) and x.dtype == np.float32
  assert -1 <= x.min() and x.max() <= 1
  np.testing.assert_array_equal(x, sg.stats.normalise(log_mel(waves, SMALL)))
  w = sg.decode(x, iters=8, batch=2)  # two batches and a remainder
  assert w.shape == (5, SMALL.num_samples) and w.dtype == np.float32
  assert np.abs(w).max() <= 1
  assert sg.decode(np.zeros((0, 16, 16, 1)), iters=4).shape == (0, SMALL.num_samples)


@pytest.mark.parametrize("spec", [SMALL, SpecConfig()], ids=["small", "default"])
def test_griffin_lim_round_trip_keeps_a_tones_pitch(spec):
  freqs = [440.0, 1000.0]
  tones = _tones(freqs, spec)
  # moments of a spread of tones and noise, so the test tones are not clipped flat
  fit = np.concatenate([_tones([250, 440, 700, 1000, 1600], spec), _noise(3, spec)])
  sg = Spectrogram(spec, SpecStats.fit(log_mel(fit, spec)))
  back = sg.decode(sg.encode(tones))
  assert back.shape == tones.shape
  # within 1.5 FFT bins (the default: 23 Hz; found 4 and 15 Hz off; the mel filters near 1 kHz
  # are 37 Hz apart, which bounds the pseudo-inverse's accuracy)
  tol = 1.5 * spec.sample_rate / spec.n_fft
  for f, w in zip(freqs, back):
    assert np.sqrt(np.mean(w**2)) > 1e-3  # sound, not silence
    assert abs(_peak_hz(w, spec.sample_rate) - f) <= tol, (f, _peak_hz(w, spec.sample_rate))


def test_griffin_lim_recovers_a_consistent_magnitude():
  x = _tones([600.0], SMALL) + _noise(1, SMALL, seed=4)
  mag = jnp.abs(stft(x, SMALL))
  w = griffin_lim(mag, SMALL, iters=64)
  err = float(jnp.linalg.norm(jnp.abs(stft(w, SMALL)) - mag) / jnp.linalg.norm(mag))
  err0 = float(jnp.linalg.norm(jnp.abs(stft(griffin_lim(mag, SMALL, iters=0), SMALL)) - mag))
  assert err < 0.2 and err * float(jnp.linalg.norm(mag)) < 0.5 * err0
  w_rand = griffin_lim(mag, SMALL, iters=4, key=jax.random.key(0))
  assert w_rand.shape == (1, SMALL.num_samples)
  assert not np.allclose(w_rand, griffin_lim(mag, SMALL, iters=4))  # the key sets the phase


# --- speaker-verification metrics ----------------------------------------------------------


def test_eer_perfect_separation_is_zero():
  # threshold 2 (the lowest target) accepts every target and no non-target
  assert metrics.equal_error_rate([2.0, 3.0, 4.0], [0.0, 1.0]) == (0.0, 2.0)


def test_eer_identical_scores_is_one_half():
  # threshold 2: targets 0, 1 rejected (FRR 2/4), non-targets 2, 3 accepted (FAR 2/4)
  assert metrics.equal_error_rate([0, 1, 2, 3], [0, 1, 2, 3]) == (0.5, 2.0)


def test_eer_one_overlap_hand_worked():
  # accepted when score >= threshold. At 0.5: FRR 1/4 (0.3), FAR 2/4 (0.6, 0.5); at 0.6:
  # FRR 1/4 (0.3), FAR 1/4 (0.6): they cross; at 0.7: FRR 1/4, FAR 0.
  eer, thr = metrics.equal_error_rate([0.9, 0.8, 0.7, 0.3], [0.6, 0.5, 0.4, 0.2])
  assert eer == pytest.approx(0.25) and thr == pytest.approx(0.6)


def test_eer_without_a_crossing_is_the_mean_where_closest():
  # thresholds 0, 1, 2, 2.5, 2.6, 3, 5, inf:
  #   FRR (targets below) 0, 0, 1/3, 2/3, 2/3, 2/3, 1, 1
  #   FAR (non-targets at or above) 1, 3/4, 3/4, 3/4, 1/2, 1/4, 1/4, 0
  # |FRR - FAR| is least (1/12) at 2.5: EER (2/3 + 3/4) / 2 = 17/24.
  eer, thr = metrics.equal_error_rate([1.0, 2.0, 3.0], [0.0, 2.5, 2.6, 5.0])
  assert eer == pytest.approx(17 / 24) and thr == 2.5


def test_eer_reversed_scores_is_one():
  # non-targets all score above targets: at threshold 2 both error rates are 1
  assert metrics.equal_error_rate([0.0, 1.0], [2.0, 3.0]) == (1.0, 2.0)


@pytest.mark.parametrize("target, nontarget", [([], [0.1]), ([0.1], []), ([], [])])
def test_eer_rejects_empty_scores(target, nontarget):
  with pytest.raises(ValueError, match="EER needs target and non-target scores"):
    metrics.equal_error_rate(target, nontarget)


def test_verification_scores_on_tiny_embeddings():
  trials = np.array([[1.0, 0.0], [0.0, 2.0]])
  enrolled = np.array([[3.0, 0.0], [1.0, 1.0]])
  others = [np.array([[0.0, 1.0]]), np.array([[-1.0, 0.0], [1.0, 1.0], [0.0, -5.0]])]
  target, nontarget = metrics.verification_scores(trials, enrolled, others)
  r = 1 / np.sqrt(2)
  np.testing.assert_allclose(target, [(1 + r) / 2, (0 + r) / 2])
  assert nontarget.shape == (len(trials) * len(others),)
  # one block per other speaker, each in trial order
  np.testing.assert_allclose(nontarget, [0.0, 1.0, (-1 + r + 0) / 3, (0 + r - 1) / 3])
  np.testing.assert_allclose(
    metrics.cosine_similarity(trials, enrolled), [[1.0, r], [0.0, r]], atol=1e-12
  )
  eer, _ = metrics.equal_error_rate(target, nontarget)
  assert 0 <= eer <= 1


def test_verification_scores_reject_empty_embeddings():
  with pytest.raises(ValueError, match="n >= 1"):
    metrics.verification_scores(np.zeros((0, 2)), np.ones((2, 2)), [np.ones((1, 2))])
  with pytest.raises(ValueError, match="n >= 1"):
    metrics.verification_scores(np.ones((1, 2)), np.zeros((0, 2)), [np.ones((1, 2))])
  with pytest.raises(ValueError):
    metrics.verification_scores(np.ones((1, 2)), np.ones((1, 2)), [])


# --- specgan -------------------------------------------------------------------------------


def _tiny_specgan(**kw):
  return mg.models.specgan(z_dim=8, g_width=16, d_width=8, w_dim=16, **kw)


def test_specgan_shapes_and_range():
  model = _tiny_specgan()
  assert model.data_shape == (64, 32, 1)
  assert mg.models.get_model("specgan").data_shape == (64, 32, 1)
  params = model.init(jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (3, model.z_dim))
  x = model.generate(params.g, z)
  assert x.shape == (3, 64, 32, 1)
  assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.std()) > 0
  logits = model.discriminate(params.d, x)
  assert logits.shape == (3,) and bool(jnp.isfinite(logits).all())
  other = mg.models.specgan(n_mels=16, frames=16, z_dim=8, g_width=16, d_width=8, w_dim=16)
  assert other.data_shape == SMALL.image_shape
  p2 = other.init(jax.random.key(0))
  assert other.generate(p2.g, z).shape == (3, 16, 16, 1)


@pytest.mark.parametrize(
  "kw, name",
  [(dict(n_mels=30), "n_mels=30"), (dict(frames=18), "frames=18"), (dict(n_mels=0), "n_mels=0")],
)
def test_specgan_rejects_sizes_not_a_multiple_of_4(kw, name):
  with pytest.raises(ValueError, match=f"specgan: {name}.*multiple of 4"):
    mg.models.specgan(**kw)


def test_specgan_adapts_on_a_spectrogram_support():
  model = _tiny_specgan()
  config = mg.AdaptConfig(model, inner_steps=1, inner_lr=0.05)
  params = model.init(jax.random.key(0))
  support = jax.random.uniform(jax.random.key(2), (4, 64, 32, 1), minval=-1, maxval=1)
  adapted = jax.jit(lambda p, s, k: mg.adapt(p, s, k, config))(params, support, jax.random.key(3))
  assert jax.tree.structure(adapted) == jax.tree.structure(params)
  leaves = jax.tree.leaves(adapted)
  assert all(bool(jnp.isfinite(leaf).all()) for leaf in leaves)
  changed = [
    not np.allclose(a, b) for a, b in zip(jax.tree.leaves(adapted.d), jax.tree.leaves(params.d))
  ]
  assert any(changed)  # the inner step moved D
  x = model.generate(adapted.g, jnp.zeros((2, model.z_dim)))
  assert x.shape == (2, 64, 32, 1)


def test_specgan_meta_steps_with_second_order_maml_and_reptile():
  """A spectrogram pair goes through meta_step like an image pair: second-order MAML (through
  its one inner step) moves the initialisation along a finite meta-gradient, and so does
  Reptile."""
  model = mg.models.specgan(n_mels=16, frames=16, g_width=16, d_width=8, w_dim=16, z_dim=8)
  tasks = mg.Tasks(
    jax.random.uniform(jax.random.key(1), (2, 2, 16, 16, 1), minval=-1, maxval=1),
    jax.random.uniform(jax.random.key(2), (2, 2, 16, 16, 1), minval=-1, maxval=1),
  )
  for algorithm in ("maml", "reptile"):
    ac = mg.AdaptConfig(model, inner_steps=1, inner_lr=0.01)
    config = mg.MetaConfig(ac, algorithm=algorithm, outer_lr=1e-3)
    state = mg.init(jax.random.key(0), config)
    new, metrics = jax.jit(lambda s, t, k: mg.meta_step(s, t, k, config))(
      state, tasks, jax.random.key(3)
    )
    assert int(new.step) == 1
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(metrics)), algorithm
    moved = [
      not np.allclose(a, b)
      for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))
    ]
    assert any(moved), algorithm
