"""Recordings as :class:`ClassDataset`: FSDD, a folder of WAV files, TFDS ``spoken_digit``.

A raw audio source holds, per class, float32 clips ``[n, num_samples]`` of one
fixed length (:attr:`metagan_jax.audio.SpecConfig.num_samples`), each read,
mixed down to mono, resampled to the run's rate, trimmed of leading and
trailing silence, loudness-normalised, then cut or padded with silence.
:func:`to_spectrograms` turns them into the ``[n, n_mels, frames, 1]`` images a
model sees, with moments fitted on the meta-training voices only.

Every check runs on reading, before anything is compiled, and names the file
and the fix. Reading needs ``soundfile`` (``pip install 'metagan_jax[audio]'``);
resampling uses SciPy (a JAX dependency).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from metagan_jax.audio import SpecConfig, SpecStats, Spectrogram, fix_length
from metagan_jax.data.sources import ClassDataset, DataError, announce

__all__ = [
  "AUDIO_SUFFIXES",
  "DEFAULT_SPEC",
  "find_fsdd",
  "read_audio",
  "prepare_clip",
  "load_fsdd",
  "load_audio_folder",
  "load_tfds_spoken_digit",
  "load_recordings",
  "fit_stats",
  "to_spectrograms",
  "shift_voices",
]

#: File suffixes an audio folder source reads.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aif", ".aiff")
#: The spectrogram settings a source uses unless given others (``SpecConfig()``).
DEFAULT_SPEC = SpecConfig()
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
# Loudness target: RMS of the voiced part at -23 dBFS, a broadcast-like level
# that leaves peaks of ordinary speech below full scale.
_TARGET_RMS = 10 ** (-23 / 20)
_SILENT_PEAK = 10 ** (-60 / 20)  # a file whose peak is below -60 dBFS holds no speech
_TRIM_DB = 40.0  # frames 40 dB below the loudest frame are silence (librosa's trim default: 60)


def _import_soundfile():
  try:
    import soundfile  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
      "reading recordings needs soundfile: pip install 'metagan_jax[audio]' "
      f"(or: pip install soundfile). ({e})"
    ) from e
  return soundfile


def _wav_format_tag(path: Path) -> int | None:
  """The WAVE ``fmt `` chunk's format tag, or None if ``path`` is not RIFF/WAVE."""
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return None
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        return None
      order = "big" if head[:4] == b"RIFX" else "little"
      size = int.from_bytes(chunk[4:], order)
      if chunk[:4] == b"fmt ":
        return int.from_bytes(f.read(2), order)
      f.seek(size + (size & 1), 1)


def read_audio(path: str | os.PathLike, *, verbose: bool = True) -> tuple[np.ndarray, int]:
  """Reads one recording: float32 mono ``[L]`` in [-1, 1] and its sample rate.

  Stereo (or more channels) is mixed down to the channels' mean, with a line
  on stderr.

  Raises:
    DataError: not an audio file, an unreadable sample format, or an empty file.
  """
  sf = _import_soundfile()
  p = Path(path)
  if p.stat().st_size == 0:
    raise DataError(f"audio file {str(p)!r} is empty (0 bytes); remove it or record it again.")
  try:
    wave, rate = sf.read(str(p), dtype="float32", always_2d=True)
  except Exception as e:  # libsndfile raises its own error types
    tag = _wav_format_tag(p)
    if tag is not None:
      raise DataError(
        f"audio file {str(p)!r} is a WAV file in a sample format soundfile cannot read "
        f"(format tag 0x{tag:04x}); convert it to 16-bit PCM, e.g. "
        f"`ffmpeg -i IN -c:a pcm_s16le OUT.wav` or `sox IN -b 16 -e signed OUT.wav`. ({e})"
      ) from e
    raise DataError(
      f"{str(p)!r} is not an audio file soundfile can read ({type(e).__name__}: {e}); "
      f"use WAV, FLAC or OGG recordings (suffixes {AUDIO_SUFFIXES}), or move the file out "
      f"of the folder."
    ) from e
  if wave.shape[0] == 0:
    raise DataError(f"audio file {str(p)!r} holds no samples; remove it or record it again.")
  if wave.shape[1] > 1:
    announce(f"{p.name}: {wave.shape[1]} channels mixed down to mono", verbose)
  return wave.mean(axis=1).astype(np.float32), int(rate)


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
  if rate == target:
    return wave
  from scipy import signal  # pylint: disable=g-import-not-at-top

  r = Fraction(target, rate).limit_denominator(1000)
  return signal.resample_poly(wave, r.numerator, r.denominator).astype(np.float32)


def _trim(wave: np.ndarray, spec: SpecConfig) -> np.ndarray:
  """Drops leading and trailing frames more than ``_TRIM_DB`` below the loudest frame."""
  frame, hop = spec.n_fft, spec.n_fft // 4
  if len(wave) <= frame:
    return wave
  starts = np.arange(0, len(wave) - frame + 1, hop)
  rms = np.sqrt(np.array([np.mean(wave[s : s + frame] ** 2) for s in starts]) + 1e-20)
  loud = np.nonzero(20 * np.log10(rms / rms.max()) > -_TRIM_DB)[0]
  return wave[starts[loud[0]] : starts[loud[-1]] + frame]


def prepare_clip(wave: np.ndarray, rate: int, spec: SpecConfig, what: str) -> np.ndarray:
  """One clip as a run reads it: resampled, trimmed, loudness-normalised, at a fixed length.

  Args:
    wave: float mono samples in [-1, 1].
    rate: its sample rate in Hz.
    spec: the run's spectrogram settings (its rate, window and length).
    what: names the clip in errors (the file).

  Returns:
    float32 ``[spec.num_samples]``.

  Raises:
    DataError: a silent clip, or one shorter than one STFT window once trimmed.
  """
  wave = np.asarray(wave, np.float32)
  if not np.isfinite(wave).all():
    raise DataError(f"{what}: holds NaN or inf samples; re-export the recording.")
  peak = float(np.abs(wave).max()) if wave.size else 0.0
  if peak < _SILENT_PEAK:
    raise DataError(
      f"{what}: silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS, below -60 dBFS); "
      f"remove it or record it again."
    )
  wave = _trim(_resample(wave, rate, spec.sample_rate), spec)
  if len(wave) < spec.n_fft:
    raise DataError(
      f"{what}: {len(wave) / spec.sample_rate * 1000:.0f} ms of sound after trimming silence, "
      f"shorter than one STFT window ({spec.n_fft} samples = "
      f"{spec.n_fft / spec.sample_rate * 1000:.0f} ms at {spec.sample_rate} Hz); use a "
      f"longer recording, or remove it."
    )
  rms = float(np.sqrt(np.mean(wave**2)))
  wave = wave * (_TARGET_RMS / max(rms, 1e-8))
  wave = wave / max(1.0, float(np.abs(wave).max()) / 0.99)  # never clip
  return fix_length(wave, spec)


def _read_clip(path: Path, spec: SpecConfig, verbose: bool) -> np.ndarray:
  wave, rate = read_audio(path, verbose=verbose)
  return prepare_clip(wave, rate, spec, f"audio file {str(path)!r}")


def find_fsdd(data_dir=None, *, required: bool = True) -> Path | None:
  """The FSDD folder: ``data_dir``, ``$METAGAN_FSDD_DIR``, or ``../shared/data/fsdd``.

  The last is looked for beside the repository (and beside the working directory).
  """
  if data_dir is not None:  # an explicit folder is used or refused, never replaced
    if (Path(data_dir).expanduser() / "recordings").is_dir():
      return Path(data_dir).expanduser()
    raise DataError(
      f"FSDD folder {str(data_dir)!r} has no recordings/ sub-folder; point data_dir at the "
      f"folder that holds recordings/{{digit}}_{{speaker}}_{{index}}.wav."
    )
  here = Path(__file__).resolve().parents[3]
  candidates = [os.environ.get("METAGAN_FSDD_DIR")]
  candidates += [here / "shared/data/fsdd", Path.cwd().parent / "shared/data/fsdd"]
  for c in candidates:
    if c and (Path(c).expanduser() / "recordings").is_dir():
      return Path(c).expanduser()
  if required:
    raise DataError(
      "FSDD not found: set METAGAN_FSDD_DIR or data_dir to the folder holding recordings/ "
      "(the Free Spoken Digit Dataset), or use dataset='tfds:spoken_digit' with download=True."
    )
  return None


def _grouped(
  keyed: Sequence[tuple[str, str, int, np.ndarray]], source: str, min_clips: int
) -> ClassDataset:
  """(speaker, digit, index, clip) -> one class per (speaker, digit), clips by index."""
  by_class: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
  for speaker, digit, index, clip in keyed:
    by_class.setdefault((speaker, digit), []).append((index, clip))
  names, images, groups = [], [], []
  for speaker, digit in sorted(by_class):
    items = sorted(by_class[(speaker, digit)], key=lambda t: t[0])
    if len(items) < min_clips:
      raise DataError(
        f"{source}: class {speaker}/{digit} has {len(items)} recordings, fewer than the "
        f"{min_clips} needed; add recordings or lower K."
      )
    names.append(f"{speaker}/{digit}")
    images.append(np.stack([c for _, c in items]))
    groups.append(speaker)
  return ClassDataset(names, images, groups, source)


def load_fsdd(
  data_dir=None,
  *,
  spec: SpecConfig = DEFAULT_SPEC,
  speakers: Sequence[str] | None = None,
  verbose: bool = True,
) -> ClassDataset:
  """FSDD: one class per (speaker, digit), named ``speaker/digit``, grouped by speaker.

  Each class holds its clips ``[n, num_samples]`` sorted by recording index; with
  all 50 of FSDD present, position ``i`` is the file ``{digit}_{speaker}_{i}.wav``
  (the voices protocol, which checks for 50, gives recordings 0-24 to its oracles
  and 25-49 to supports and held-out clips).

  Args:
    data_dir: the FSDD folder (default :func:`find_fsdd`).
    spec: the run's sample rate and clip length.
    speakers: keep only these speakers (default all).
    verbose: print the source.
  """
  root = find_fsdd(data_dir)
  keyed, unknown = [], []
  for f in sorted((root / "recordings").iterdir()):
    m = _FSDD_NAME.match(f.name)
    if m is None:
      if not f.name.startswith("."):
        unknown.append(f.name)
      continue
    digit, speaker, index = m.group(1), m.group(2), int(m.group(3))
    if speakers is not None and speaker not in speakers:
      continue
    keyed.append((speaker, digit, index, _read_clip(f, spec, verbose)))
  if unknown:
    raise DataError(
      f"FSDD folder {str(root / 'recordings')!r} holds files not named "
      f"{{digit}}_{{speaker}}_{{index}}.wav: {unknown[:3]}; move them out."
    )
  if not keyed:
    raise DataError(f"FSDD folder {str(root)!r} has no recordings of speakers {speakers}.")
  data = _grouped(keyed, f"FSDD from {root}", 1)
  announce(
    f"FSDD: {len(data)} classes (speaker/digit), {sum(data.counts)} clips of "
    f"{spec.seconds:.2f} s at {spec.sample_rate} Hz from {root}",
    verbose,
  )
  return data


def load_audio_folder(
  path: str | os.PathLike,
  *,
  spec: SpecConfig = DEFAULT_SPEC,
  min_clips: int = 1,
  verbose: bool = True,
) -> ClassDataset:
  """A user's recordings: ``path/<class>/<files>``, or ``path/<files>`` as one class.

  Files are resampled to ``spec.sample_rate``, trimmed of silence and
  loudness-normalised (a user's recordings are not, unlike FSDD's). A class is
  its own group unless the sub-folder is named ``<speaker>/<anything>`` two
  levels deep (``path/<speaker>/<class>/<files>``), which groups by speaker.

  Args:
    path: the folder.
    spec: the run's spectrogram settings.
    min_clips: fewest recordings a class may have (K, the support size).
    verbose: print the source and any mixdown.
  """
  root = Path(path).expanduser()
  if not root.is_dir():
    raise DataError(f"audio folder {str(root)!r} does not exist; check the path (data_dir).")

  def files(folder: Path) -> list[Path]:
    return sorted(
      f
      for f in folder.iterdir()
      if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in AUDIO_SUFFIXES
    )

  subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
  if files(root) and subdirs:
    raise DataError(
      f"audio folder {str(root)!r} mixes recordings and sub-folders; put every recording in "
      f"a class sub-folder, or use a folder of recordings only (one class)."
    )
  classes: list[tuple[str, str, Path]] = []  # (name, group, folder)
  if not subdirs:
    classes.append((root.name, root.name, root))
  for d in subdirs:
    inner = sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith("."))
    if inner and files(d):
      raise DataError(
        f"audio folder {str(d)!r} mixes recordings and class sub-folders; put its recordings "
        f"in a class sub-folder (<speaker>/<class>/...), or drop the sub-folders."
      )
    if inner:
      classes += [(f"{d.name}/{x.name}", d.name, x) for x in inner]
    else:
      classes.append((d.name, d.name, d))
  names, images, groups = [], [], []
  for name, group, folder in classes:
    fs = files(folder)
    if len(fs) < min_clips:
      others = sorted(
        x.name for x in folder.iterdir() if x.is_file() and x.suffix.lower() not in AUDIO_SUFFIXES
      )
      hint = f" (not read: {others[:3]}; suffixes read: {AUDIO_SUFFIXES})" if others else ""
      raise DataError(
        f"audio folder {str(folder)!r} has {len(fs)} recordings{hint}, fewer than the "
        f"{min_clips} needed (K); add recordings, or lower K."
      )
    names.append(name)
    images.append(np.stack([_read_clip(f, spec, verbose) for f in fs]))
    groups.append(group)
  data = ClassDataset(names, images, groups, f"audio folder {root}")
  announce(
    f"audio folder: {len(data)} classes, {sum(data.counts)} clips resampled to "
    f"{spec.sample_rate} Hz, trimmed and loudness-normalised, from {root}",
    verbose,
  )
  return data


def load_tfds_spoken_digit(
  *,
  data_dir=None,
  download: bool = False,
  spec: SpecConfig = DEFAULT_SPEC,
  verbose: bool = True,
) -> ClassDataset:
  """TFDS ``spoken_digit`` (FSDD v1.0.9: 5 speakers), classes as :func:`load_fsdd`'s.

  TFDS stores the speaker only in ``audio/filename`` (``7_jackson_32.wav``);
  it is parsed from there. Samples are 16-bit integers at 8 kHz.
  """
  from metagan_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  tfds = tfds_source.import_tfds()
  builder = tfds_source.get_builder("spoken_digit", data_dir=data_dir, download=download)
  rate = 8000
  try:
    rate = int(builder.info.features["audio"].sample_rate or rate)
  except (AttributeError, KeyError, TypeError):
    pass
  split = "+".join(builder.info.splits.keys()) or "train"
  keyed = []
  ds = builder.as_dataset(split=split, shuffle_files=False)
  for ex in tfds.as_numpy(ds):
    fname = ex["audio/filename"]
    fname = fname.decode() if isinstance(fname, bytes) else str(fname)
    m = _FSDD_NAME.match(os.path.basename(fname))
    if m is None:
      raise DataError(
        f"TFDS spoken_digit example {fname!r} is not named {{digit}}_{{speaker}}_{{index}}.wav; "
        f"this builder version is not supported."
      )
    audio = np.asarray(ex["audio"])
    wave = audio.astype(np.float32) / (32768.0 if np.issubdtype(audio.dtype, np.integer) else 1.0)
    if wave.ndim == 2:
      announce(f"{fname}: {wave.shape[1]} channels mixed down to mono", verbose)
      wave = wave.mean(axis=1)
    clip = prepare_clip(wave, rate, spec, f"TFDS spoken_digit example {fname!r}")
    keyed.append((m.group(2), m.group(1), int(m.group(3)), clip))
  if not keyed:
    raise DataError(f"TFDS spoken_digit split {split!r} has no examples.")
  data = _grouped(keyed, f"TFDS spoken_digit ({split}) from {builder.data_dir}", 1)
  announce(f"TFDS spoken_digit: {len(data)} classes of {len(set(data.groups))} speakers", verbose)
  return data


def load_recordings(
  dataset: str,
  data_dir=None,
  *,
  spec: SpecConfig = DEFAULT_SPEC,
  min_clips: int = 1,
  download: bool = False,
  verbose: bool = True,
) -> ClassDataset:
  """Every class's raw clips from ``dataset`` (``"fsdd"``, ``"audio_folder"``,
  ``"tfds:spoken_digit"`` or ``"spoken_digit"``), no split, no spectrogram."""
  if dataset == "fsdd":
    return load_fsdd(data_dir, spec=spec, verbose=verbose)
  if dataset == "audio_folder":
    if data_dir is None:
      raise DataError("dataset='audio_folder' needs data_dir= the folder of recordings.")
    return load_audio_folder(data_dir, spec=spec, min_clips=min_clips, verbose=verbose)
  if dataset in ("tfds:spoken_digit", "spoken_digit"):
    return load_tfds_spoken_digit(data_dir=data_dir, download=download, spec=spec, verbose=verbose)
  raise DataError(
    f"{dataset!r} is not a source of recordings; use 'fsdd', 'audio_folder' or 'tfds:spoken_digit'."
  )


def _speed(wave: np.ndarray, factor: float) -> np.ndarray:
  """``wave`` played ``factor`` times faster (pitch and formants x factor), same length."""
  n = len(wave)
  out = np.interp(np.arange(0, n, factor), np.arange(n), wave).astype(np.float32)
  return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def shift_voices(data: ClassDataset, semitones: Sequence[float]) -> ClassDataset:
  """Each class and its copies played faster or slower by ``semitones`` as new classes.

  A copy at ``+s`` semitones is the clip resampled by ``2 ** (s / 12)``: pitch, formants
  and tempo all move, as for a speaker with a shorter (or longer) vocal tract, so each
  shift is a new voice for meta-training (as rotations make new Omniglot classes). A copy
  keeps its speaker's group, so splits stay disjoint; names get ``/pitch+3`` etc. Make
  them from meta-training speakers only, never from a test speaker.
  """
  names, images, groups = list(data.names), list(data.images), list(data.groups)
  for st in semitones:
    if float(st) == 0:
      raise DataError("shift_voices: a shift of 0 semitones copies the data; drop it.")
    factor = 2.0 ** (float(st) / 12)
    for n, x, g in zip(data.names, data.images, data.groups):
      names.append(f"{n}/pitch{float(st):+g}")
      images.append(np.stack([_speed(w, factor) for w in x]))
      groups.append(g)
  shifts = ", ".join(f"{float(s):+g}" for s in semitones)
  return ClassDataset(
    names, images, groups, data.source + f" (+ voices shifted by {shifts} semitones as classes)"
  )


def fit_stats(train: ClassDataset, spec: SpecConfig) -> SpecStats:
  """Per-mel-bin moments of the log-mel spectrograms of ``train``'s clips (training voices)."""
  from metagan_jax import audio  # pylint: disable=g-import-not-at-top

  clips = np.concatenate(train.images)
  return SpecStats.fit(audio.log_mel_batched(clips, spec))


def to_spectrograms(data: ClassDataset, spectrogram: Spectrogram) -> ClassDataset:
  """Raw clips ``[n, num_samples]`` -> images ``[n, n_mels, frames, 1]`` in [-1, 1], per class."""
  sizes = np.cumsum([len(x) for x in data.images])[:-1]
  specs = spectrogram.encode(np.concatenate(data.images))
  return ClassDataset(
    list(data.names),
    np.split(specs, sizes),
    list(data.groups),
    data.source,
    spectrogram=spectrogram,
  )
