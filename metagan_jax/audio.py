"""Speech as images: a log-mel spectrogram of fixed size, its normalisation, and its inverse.

A clip (mono float waveform at :attr:`SpecConfig.sample_rate`) becomes a
``[n_mels, frames, 1]`` array in [-1, 1], the shape every model of the library
takes as an image::

    spec = SpecConfig()                                   # 64 mel bins x 32 frames, 8 kHz
    logmel_NxMxT = log_mel(waves_NxL, spec)               # natural log of mel magnitudes
    stats = SpecStats.fit(logmel_NxMxT)                   # per-bin moments (training voices only)
    x_NxMxTx1 = stats.normalise(logmel_NxMxT)             # [-1, 1]: what the GAN sees
    waves = griffin_lim(mel_to_linear(stats.denormalise(x_NxMxTx1), spec), spec)
    # or both directions at once: Spectrogram(spec, stats).encode / .decode

As in SpecGAN (Donahue et al., 2018), each frequency bin is normalised by
moments of the training set and clipped: ``(logmel - mean) / (3 * std)`` in
[-1, 1]. The inverse maps mel magnitudes back to linear ones with the
filterbank's pseudo-inverse (clipped at zero) and recovers a phase with
Griffin-Lim's fast (momentum) variant (Perraudin et al., 2013), jitted and
batched in JAX. Everything here is pure ``jax.numpy``; reading files is
:mod:`metagan_jax.data.audio`'s business.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "SpecConfig",
  "SpecStats",
  "mel_filterbank",
  "fix_length",
  "stft",
  "istft",
  "log_mel",
  "mel_to_linear",
  "griffin_lim",
  "log_mel_batched",
  "Spectrogram",
]


@dataclasses.dataclass(frozen=True)
class SpecConfig:
  """The spectrogram a run models.

  The defaults fit FSDD (8 kHz, median clip 0.42 s): 32 frames of 24 ms keep
  0.74 s, all of 97% of its clips; a 64 ms Hann window resolves the harmonics
  of a male voice at low frequency.

  Attributes:
    sample_rate: Hz; every clip is resampled to it on reading.
    n_fft: STFT window and FFT length, in samples.
    hop: samples between frames.
    n_mels: mel bins (the image's height).
    frames: STFT frames (the image's width); a clip is cut or padded with
      silence to ``hop * (frames - 1)`` samples, :attr:`num_samples`.
    fmin, fmax: the mel filterbank's range in Hz (``fmax`` 0: Nyquist).
    floor: magnitude floor before the log (silence maps to ``log(floor)``).
  """

  sample_rate: int = 8000
  n_fft: int = 512
  hop: int = 192
  n_mels: int = 64
  frames: int = 32
  fmin: float = 0.0
  fmax: float = 0.0
  floor: float = 1e-4

  def __post_init__(self):
    for name in ("sample_rate", "n_fft", "hop", "n_mels", "frames"):
      v = getattr(self, name)
      if not isinstance(v, int | np.integer) or v < 1:
        raise ValueError(f"SpecConfig.{name} must be a positive int, got {v!r}.")
    if self.n_fft % 2:
      raise ValueError(
        f"SpecConfig.n_fft={self.n_fft} is odd; centred frames need an even window "
        f"(e.g. {self.n_fft + 1})."
      )
    if self.hop > self.n_fft:
      raise ValueError(
        f"SpecConfig.hop={self.hop} exceeds n_fft={self.n_fft}: frames would skip samples; "
        f"use hop <= n_fft (n_fft / 4 to n_fft / 2 invert best)."
      )
    if not 0 <= self.fmin < (self.fmax or self.sample_rate / 2) <= self.sample_rate / 2:
      raise ValueError(
        f"SpecConfig needs fmin < fmax <= sample_rate / 2; got fmin={self.fmin}, "
        f"fmax={self.fmax}, sample_rate={self.sample_rate}."
      )

  @property
  def num_samples(self) -> int:
    """The fixed clip length in samples, ``hop * (frames - 1)`` (the frames are centred)."""
    return self.hop * (self.frames - 1)

  @property
  def seconds(self) -> float:
    """The fixed clip length in seconds."""
    return self.num_samples / self.sample_rate

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(n_mels, frames, 1)``: the model's data shape."""
    return (self.n_mels, self.frames, 1)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _hz_to_mel(f):
  # Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above.
  f = np.asarray(f, np.float64)
  lin = f / (200.0 / 3)
  log = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
  return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m):
  m = np.asarray(m, np.float64)
  lin = m * (200.0 / 3)
  log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
  return np.where(m >= 15.0, log, lin)


@functools.lru_cache(maxsize=8)
def mel_filterbank(spec: SpecConfig) -> np.ndarray:
  """``float32[n_mels, n_fft // 2 + 1]``: triangular filters, Slaney-normalised (as librosa)."""
  fmax = spec.fmax or spec.sample_rate / 2
  fft_hz = np.linspace(0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(fmax), spec.n_mels + 2))
  lower = (fft_hz[None] - edges[:-2, None]) / np.diff(edges)[:-1, None]
  upper = (edges[2:, None] - fft_hz[None]) / np.diff(edges)[1:, None]
  fb = np.maximum(0.0, np.minimum(lower, upper))
  fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
  if (fb.max(axis=1) <= 0).any():
    raise ValueError(
      f"{spec}: some mel filters cover no FFT bin; use fewer n_mels or a larger n_fft."
    )
  return fb.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _mel_pinv(spec: SpecConfig) -> np.ndarray:
  return np.linalg.pinv(mel_filterbank(spec).astype(np.float64)).astype(np.float32)


def fix_length(wave: np.ndarray, spec: SpecConfig) -> np.ndarray:
  """Cuts a 1-D clip to :attr:`SpecConfig.num_samples` or pads it with silence at the end."""
  n = spec.num_samples
  wave = np.asarray(wave, np.float32)
  if len(wave) >= n:
    return wave[:n]
  return np.pad(wave, (0, n - len(wave)))


def _window(spec: SpecConfig) -> jax.Array:
  return jnp.asarray(np.hanning(spec.n_fft + 1)[:-1].astype(np.float32))  # periodic Hann


def stft(waves_NxL: jax.Array, spec: SpecConfig) -> jax.Array:
  """Complex STFT ``[N, n_fft // 2 + 1, frames]`` of centred frames (zero-padded ends)."""
  half = spec.n_fft // 2
  x = jnp.pad(waves_NxL, ((0, 0), (half, half)))
  n_frames = 1 + (x.shape[1] - spec.n_fft) // spec.hop
  idx = jnp.arange(n_frames)[:, None] * spec.hop + jnp.arange(spec.n_fft)[None]
  frames_NxTxF = x[:, idx] * _window(spec)
  return jnp.fft.rfft(frames_NxTxF, axis=-1).transpose(0, 2, 1)


def istft(stft_NxFxT: jax.Array, spec: SpecConfig, length: int) -> jax.Array:
  """Least-squares inverse of :func:`stft` (weighted overlap-add), ``[N, length]``."""
  win = _window(spec)
  frames_NxTxF = jnp.fft.irfft(stft_NxFxT.transpose(0, 2, 1), n=spec.n_fft, axis=-1) * win
  n, t = frames_NxTxF.shape[:2]
  total = spec.n_fft + spec.hop * (t - 1)
  idx = (jnp.arange(t)[:, None] * spec.hop + jnp.arange(spec.n_fft)[None]).reshape(-1)
  out = jnp.zeros((n, total), frames_NxTxF.dtype).at[:, idx].add(frames_NxTxF.reshape(n, -1))
  norm = jnp.zeros((total,), win.dtype).at[idx].add(jnp.tile(win**2, t))
  out = out / jnp.maximum(norm, 1e-8)
  half = spec.n_fft // 2
  return out[:, half : half + length]


def log_mel(waves_NxL, spec: SpecConfig) -> jax.Array:
  """Natural-log mel magnitudes ``[N, n_mels, frames]`` of fixed-length clips."""
  mag = jnp.abs(stft(jnp.asarray(waves_NxL, jnp.float32), spec))
  mel = jnp.einsum("mf,nft->nmt", jnp.asarray(mel_filterbank(spec)), mag)
  return jnp.log(jnp.maximum(mel, spec.floor))


def mel_to_linear(logmel_NxMxT: jax.Array, spec: SpecConfig) -> jax.Array:
  """Log-mel -> linear STFT magnitudes ``[N, n_fft // 2 + 1, frames]`` (pseudo-inverse, >= 0)."""
  mel = jnp.exp(logmel_NxMxT)
  mel = jnp.where(logmel_NxMxT <= np.log(spec.floor) + 1e-3, 0.0, mel)  # the floor is silence
  return jnp.maximum(jnp.einsum("fm,nmt->nft", jnp.asarray(_mel_pinv(spec)), mel), 0.0)


@functools.partial(jax.jit, static_argnames=("spec", "iters"))
def griffin_lim(
  mag_NxFxT: jax.Array, spec: SpecConfig, iters: int = 64, momentum: float = 0.99, key=None
) -> jax.Array:
  """Waveforms ``[N, num_samples]`` whose STFT magnitudes approach ``mag_NxFxT``.

  Fast Griffin-Lim (Perraudin et al., 2013), librosa's default momentum 0.99:
  alternate projections onto consistent spectrograms and onto the given
  magnitudes, with an extrapolation step. Batched over clips and jitted.

  Args:
    mag_NxFxT: linear STFT magnitudes.
    spec: the spectrogram's settings.
    iters: projection rounds (32 to 64 is enough at this size).
    momentum: the extrapolation weight (0: plain Griffin-Lim).
    key: the initial phase's key (default: zero phase, deterministic).
  """
  n = spec.num_samples
  if key is None:
    angles = jnp.ones_like(mag_NxFxT, jnp.complex64)
  else:
    angles = jnp.exp(2j * jnp.pi * jax.random.uniform(key, mag_NxFxT.shape)).astype(jnp.complex64)
  mag = mag_NxFxT.astype(jnp.complex64)

  def body(_, carry):
    angles, prev = carry
    rebuilt = stft(istft(mag * angles, spec, n), spec)
    new = rebuilt - (momentum / (1 + momentum)) * prev
    return new / jnp.maximum(jnp.abs(new), 1e-8), rebuilt

  angles, _ = jax.lax.fori_loop(0, iters, body, (angles, jnp.zeros_like(angles)))
  return istft(mag * angles, spec, n)


@dataclasses.dataclass(frozen=True)
class SpecStats:
  """Per-mel-bin moments of the log-mel spectrograms of the training voices.

  Attributes:
    mean, std: ``float32[n_mels]``; ``normalise`` maps ``(logmel - mean) / (3 * std)``
      and clips to [-1, 1], as in SpecGAN.
  """

  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, logmel_NxMxT) -> SpecStats:
    """Moments over clips and frames of ``logmel_NxMxT`` (the training voices' clips only)."""
    x = np.asarray(logmel_NxMxT, np.float64)
    if x.ndim != 3 or not len(x):
      raise ValueError(f"SpecStats.fit needs log-mel [N, n_mels, frames], N >= 1; got {x.shape}.")
    return cls(
      x.mean(axis=(0, 2)).astype(np.float32),
      np.maximum(x.std(axis=(0, 2)), 1e-3).astype(np.float32),
    )

  def normalise(self, logmel_NxMxT) -> np.ndarray:
    """Log-mel ``[N, M, T]`` -> float32 ``[N, M, T, 1]`` in [-1, 1]."""
    x = (np.asarray(logmel_NxMxT) - self.mean[:, None]) / (3 * self.std[:, None])
    return np.clip(x, -1.0, 1.0).astype(np.float32)[..., None]

  def denormalise(self, x_NxMxTx1) -> jax.Array:
    """:meth:`normalise`'s inverse (up to the clipping): ``[N, M, T, 1]`` -> log-mel ``[N, M, T]``."""
    x = jnp.asarray(x_NxMxTx1)[..., 0]
    return x * (3 * jnp.asarray(self.std)[:, None]) + jnp.asarray(self.mean)[:, None]

  def to_dict(self) -> dict:
    return {"mean": self.mean.tolist(), "std": self.std.tolist()}

  @classmethod
  def from_dict(cls, d: dict) -> SpecStats:
    return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


@functools.partial(jax.jit, static_argnames=("spec",))
def _log_mel_jit(waves_NxL, spec):
  return log_mel(waves_NxL, spec)


def log_mel_batched(waves_NxL, spec: SpecConfig, batch: int = 256) -> np.ndarray:
  """:func:`log_mel` of fixed-length clips, jitted, ``batch`` clips at a time (numpy out)."""
  waves_NxL = np.asarray(waves_NxL, np.float32)
  if waves_NxL.ndim != 2 or waves_NxL.shape[1] != spec.num_samples:
    raise ValueError(
      f"log_mel_batched needs clips [N, {spec.num_samples}] (spec.num_samples); got "
      f"{waves_NxL.shape}; cut or pad them with fix_length."
    )
  out = [
    np.asarray(_log_mel_jit(waves_NxL[i : i + batch], spec))
    for i in range(0, len(waves_NxL), batch)
  ]
  return np.concatenate(out) if out else np.zeros((0, spec.n_mels, spec.frames), np.float32)


@functools.partial(jax.jit, static_argnames=("spec", "iters"))
def _decode(x, mean, std, spec, iters):
  logmel = x[..., 0] * (3 * std)[:, None] + mean[:, None]
  return griffin_lim(mel_to_linear(logmel, spec), spec, iters)


@dataclasses.dataclass(frozen=True)
class Spectrogram:
  """A run's representation of sound: the spectrogram settings and the training voices' moments.

  ``encode`` maps clips to model inputs, ``decode`` model outputs to clips;
  ``decode(encode(w))`` is the round trip every generated clip is compared with.

  Attributes:
    spec: the STFT and mel settings.
    stats: per-bin moments of the meta-training voices.
  """

  spec: SpecConfig
  stats: SpecStats

  def encode(self, waves_NxL) -> np.ndarray:
    """Fixed-length clips ``[N, num_samples]`` -> float32 ``[N, n_mels, frames, 1]`` in [-1, 1]."""
    return self.stats.normalise(log_mel_batched(waves_NxL, self.spec))

  def decode(self, x_NxMxTx1, iters: int = 64, batch: int = 256) -> np.ndarray:
    """Model outputs ``[N, n_mels, frames, 1]`` -> float32 clips ``[N, num_samples]``.

    The normalisation's inverse, the mel pseudo-inverse and Griffin-Lim, in one
    jitted call per ``batch`` clips; each clip is peak-limited to [-1, 1].
    """
    x = np.asarray(x_NxMxTx1, np.float32)
    mean, std = jnp.asarray(self.stats.mean), jnp.asarray(self.stats.std)
    out = [
      np.asarray(_decode(jnp.asarray(x[i : i + batch]), mean, std, self.spec, iters))
      for i in range(0, len(x), batch)
    ]
    w = np.concatenate(out) if out else np.zeros((0, self.spec.num_samples), np.float32)
    peak = np.maximum(np.abs(w).max(axis=-1, keepdims=True, initial=0.0), 1.0)
    return (w / peak).astype(np.float32)

  def to_dict(self) -> dict:
    """JSON-serialisable; stored with a run (``config.json``'s ``spectrogram``)."""
    return {"spec": self.spec.to_dict(), "stats": self.stats.to_dict()}

  @classmethod
  def from_dict(cls, d: dict) -> Spectrogram:
    return cls(SpecConfig(**d["spec"]), SpecStats.from_dict(d["stats"]))
