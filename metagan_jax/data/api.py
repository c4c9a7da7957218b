"""Entry points a training script calls: :func:`load_split` and :func:`make_sampler`."""

from __future__ import annotations

import os
from collections.abc import Sequence

from metagan_jax.data import audio, folder, omniglot, splits, tfds_source
from metagan_jax.data import preprocess as pp
from metagan_jax.data.sampler import TaskSampler
from metagan_jax.data.sources import ClassDataset, DataError, announce

__all__ = [
  "AUDIO_NAMES",
  "OMNIGLOT_NAMES",
  "USER_NAMES",
  "load_split",
  "make_sampler",
]

#: Dataset names that load Omniglot (the offline copy, else TFDS).
OMNIGLOT_NAMES = ("omniglot", "omniglot28", "tfds:omniglot")
#: Dataset names that load one's own images (a folder, or an ``.npz`` file).
USER_NAMES = ("folder", "npz")
#: Dataset names that load recordings as log-mel spectrograms (FSDD's folder, TFDS
#: ``spoken_digit``, which is FSDD's older release, and a folder of one's own recordings).
AUDIO_NAMES = ("fsdd", "tfds:spoken_digit", "spoken_digit", "audio_folder")


def _kind(dataset: str) -> str:
  if dataset in OMNIGLOT_NAMES:
    return "omniglot"
  if dataset in USER_NAMES:
    return dataset
  if dataset in AUDIO_NAMES:
    return "audio"
  if dataset.startswith("tfds:") and len(dataset) > 5:
    return "tfds"
  if dataset.split("/")[0] in tfds_source.KNOWN:
    return "tfds"
  raise DataError(
    f"unknown dataset {dataset!r}; use 'omniglot' (offline copy, else TFDS), 'omniglot28' "
    f"(offline only), 'folder' or 'npz' (with data_dir=the path), one of {AUDIO_NAMES} "
    f"for recordings, one of "
    f"{tfds_source.KNOWN}, or 'tfds:<name>' for any TFDS image-classification dataset."
  )


def load_split(
  dataset: str = "omniglot",
  split: str = "train",
  *,
  data_dir=None,
  image_size: int = 28,
  channels: int = 1,
  invert: bool | None = None,
  blur: float = 0.0,
  rotations: bool | None = None,
  split_seed: int = 0,
  fractions: Sequence[float] = splits.DEFAULT_FRACTIONS,
  val_alphabets: Sequence[str] = splits.OMNIGLOT_VAL_ALPHABETS,
  download: bool = False,
  run_dir: str | os.PathLike | None = None,
  resize_each: bool = False,
  fold: int | None = None,
  spec=None,
  spectrogram=None,
  min_clips: int = 1,
  voice_shifts: Sequence[float] = (),
  verbose: bool = True,
) -> ClassDataset:
  """Loads one split, preprocessed: float32 ``[n, image_size, image_size, channels]`` in [-1, 1].

  Recordings (``dataset`` in :data:`AUDIO_NAMES`) load as log-mel spectrograms
  ``[n, n_mels, frames, 1]`` in [-1, 1] instead, normalised with the moments of
  the split's meta-training voices; the returned dataset's ``spectrogram``
  turns a model's outputs back into sound.

  Args:
    dataset: ``"omniglot"`` (offline copy if found, else TFDS omniglot),
      ``"omniglot28"`` (offline only), ``"tfds:omniglot"``, a TFDS name
      (``"mnist"``, ``"cifar10"``, ... or ``"tfds:<any>"``), ``"folder"`` or ``"npz"``.
    split: ``"train"`` (meta-train), ``"val"``, ``"test"`` (meta-test) or
      ``"all"`` (every class, e.g. one's own images to adapt to).
    data_dir: offline Omniglot folder / TFDS ``data_dir`` / the image folder /
      the ``.npz`` file.
    image_size, channels: the model's image side and channels (1 or 3).
    invert: ``1 - x`` before scaling; default True for Omniglot (strokes +1 on
      a -1 background), else False.
    blur: Gaussian blur sigma in pixels after resizing (0 = none); see
      :func:`metagan_jax.data.preprocess.blur`.
    rotations: add 90/180/270-degree rotations as new classes; default True for
      Omniglot's ``train`` split only.
    split_seed, fractions: the seeded class split of non-Omniglot datasets.
    val_alphabets: Omniglot's validation alphabets (from the background set).
    download: let TFDS download (default never).
    run_dir: if given, the split is written to ``run_dir/split.json``.
    resize_each: folder source: centre-crop and resize each image on reading
      (photos of mixed sizes) instead of requiring one size.
    fold: split by leaving groups out (:func:`metagan_jax.data.splits.fold_split`):
      fold ``f`` tests the ``f``-th group (speaker) and validates on the next;
      ``None``: the seeded class split. Recordings only.
    spec: recordings: the :class:`metagan_jax.audio.SpecConfig` (default
      ``SpecConfig()``: 64 mel bins x 32 frames at 8 kHz).
    spectrogram: recordings: a trained run's :class:`metagan_jax.audio.Spectrogram`
      (its settings and moments) instead of ``spec`` and moments fitted here.
    min_clips: recordings: the fewest clips a class may have (the support size K).
    voice_shifts: recordings, ``split="train"`` only: add every class played faster or
      slower by these semitones as new classes
      (:func:`metagan_jax.data.audio.shift_voices`; the moments stay the unshifted ones').
    verbose: print which source is used.

  Raises:
    DataError: unknown dataset or split, missing/unreadable data, empty split,
      bad images; raised before any sampling.
  """
  kind = _kind(dataset)
  splits.check_split_name(split)
  if kind == "audio":
    return _load_audio_split(
      dataset,
      split,
      data_dir=data_dir,
      download=download,
      fold=fold,
      spec=spec,
      spectrogram=spectrogram,
      min_clips=min_clips,
      voice_shifts=voice_shifts,
      split_seed=split_seed,
      fractions=fractions,
      run_dir=run_dir,
      verbose=verbose,
    )
  if fold is not None:
    raise DataError(
      f"fold={fold!r} splits recordings by speaker; {dataset!r} uses its "
      f"{'alphabet split' if kind == 'omniglot' else 'seeded class split'} (leave fold=None)."
    )
  if channels not in (1, 3):
    raise DataError(f"channels must be 1 or 3, got {channels!r}.")
  if not isinstance(image_size, int) or image_size < 1:
    raise DataError(f"image_size must be a positive int, got {image_size!r}.")
  is_omniglot = kind == "omniglot"
  if kind == "omniglot":
    source = {"omniglot": "auto", "omniglot28": "offline", "tfds:omniglot": "tfds"}[dataset]
    background = omniglot.load_omniglot(
      "background", source=source, data_dir=data_dir, download=download, verbose=verbose
    )
    evaluation = omniglot.load_omniglot(
      "evaluation", source=source, data_dir=data_dir, download=download, verbose=False
    )
    by_split = splits.omniglot_split(background, evaluation, val_alphabets)
    full = ClassDataset(
      background.names + evaluation.names,
      background.images + evaluation.images,
      background.groups + evaluation.groups,
      f"{background.source} + {evaluation.source}",
    )
    part_source = {
      "train": background.source,
      "val": background.source,
      "test": evaluation.source,
      "all": full.source,
    }[split]
    info = dict(
      dataset="omniglot",
      rule="background/evaluation by alphabet",
      val_alphabets=list(val_alphabets),
    )
  else:
    if kind in USER_NAMES and data_dir is None:
      raise DataError(f"dataset={dataset!r} needs data_dir= the {dataset} path.")
    if kind == "folder":
      full = folder.load_folder(
        data_dir, channels=channels, resize_to=image_size if resize_each else None
      )
    elif kind == "npz":
      full = folder.load_npz(data_dir)
    else:
      name = dataset[5:] if dataset.startswith("tfds:") else dataset
      full = tfds_source.load_tfds(name, data_dir=data_dir, download=download)
    by_split = splits.class_split(full, split_seed, fractions)
    info = dict(
      dataset=dataset, rule="seeded class split", split_seed=split_seed, fractions=list(fractions)
    )
    part_source = full.source
  by_split["all"] = list(full.names)
  splits.check_disjoint(by_split)
  if run_dir is not None:
    path = splits.write_split(
      run_dir, {k: v for k, v in by_split.items() if k != "all"}, source=full.source, **info
    )
    announce(f"split written to {path}", verbose)
  if not by_split[split]:
    raise DataError(
      f"split {split!r} of {full.source} is empty ({len(full)} classes in all, "
      f"split { ({k: len(v) for k, v in by_split.items()}) }); use split='all' to "
      f"use every class, or add classes."
    )
  data = full.select(by_split[split], source=f"{part_source} [{split}]")
  if invert is None:
    invert = is_omniglot
  data = pp.preprocess_dataset(
    data, image_size=image_size, channels=channels, invert=invert, blur_sigma=blur
  )
  if rotations is None:
    rotations = is_omniglot and split == "train"
  if rotations:
    data = pp.add_rotations(data)
  announce(
    f"{dataset} split {split!r}: {len(data)} classes, images {data.image_shape} "
    f"in [-1, 1] (invert={invert}, blur={blur}, rotations={rotations}) from {data.source}",
    verbose,
  )
  return data


def _load_audio_split(
  dataset: str,
  split: str,
  *,
  data_dir,
  download: bool,
  fold: int | None,
  spec,
  spectrogram,
  min_clips: int,
  voice_shifts: Sequence[float],
  split_seed: int,
  fractions: Sequence[float],
  run_dir,
  verbose: bool,
) -> ClassDataset:
  """:func:`load_split` for recordings: read clips, split by speaker, spectrograms."""
  from metagan_jax.audio import SpecConfig, Spectrogram  # pylint: disable=g-import-not-at-top

  if spectrogram is not None:
    spec = spectrogram.spec
  spec = SpecConfig() if spec is None else spec
  full = audio.load_recordings(
    dataset, data_dir, spec=spec, min_clips=min_clips, download=download, verbose=verbose
  )
  if min(full.counts) < min_clips:
    small = [n for n, c in zip(full.names, full.counts) if c < min_clips][:3]
    raise DataError(
      f"{full.source}: classes {small} have fewer than {min_clips} clips (K); lower K or "
      f"add recordings."
    )
  if fold is not None:
    by_split = splits.fold_split(full, fold)
    info = dict(dataset=dataset, rule="leave speakers out", fold=fold)
  else:
    by_split = splits.class_split(full, split_seed, fractions)
    info = dict(
      dataset=dataset,
      rule="seeded split by speaker",
      split_seed=split_seed,
      fractions=list(fractions),
    )
  by_split["all"] = list(full.names)
  splits.check_disjoint(by_split)
  if spectrogram is None:
    # The moments come from the meta-training voices only; only split='all' without folds
    # (one's own recordings, none held out) falls back to every class when no group is in
    # the training split.
    fit_on = by_split["train"]
    if not fit_on and split == "all" and fold is None:
      fit_on = by_split["all"]
    if not fit_on:
      raise DataError(
        f"the training split of {full.source} is empty, so there are no meta-training voices "
        f"to normalise the spectrograms by; give the split a training fraction, or pass a "
        f"trained run's spectrogram= (its moments)."
      )
    spectrogram = Spectrogram(spec, audio.fit_stats(full.select(fit_on), spec))
  if run_dir is not None:
    path = splits.write_split(
      run_dir,
      {k: v for k, v in by_split.items() if k != "all"},
      source=full.source,
      spectrogram=spectrogram.to_dict(),
      **info,
    )
    announce(f"split written to {path}", verbose)
  if not by_split[split]:
    raise DataError(
      f"split {split!r} of {full.source} is empty ({len(full)} classes in all); use "
      f"split='all' to use every class, or add speakers."
    )
  part = full.select(by_split[split], source=f"{full.source} [{split}]")
  if voice_shifts:
    if split != "train":
      raise DataError(
        f"voice_shifts={list(voice_shifts)} make extra voices for meta-training only; "
        f"split {split!r} must keep its speakers as they are (leave voice_shifts empty)."
      )
    part = audio.shift_voices(part, voice_shifts)
  data = audio.to_spectrograms(part, spectrogram)
  announce(
    f"{dataset} split {split!r}{'' if fold is None else f' (fold {fold})'}: {len(data)} classes "
    f"of {len(set(data.groups))} speakers, log-mel {data.image_shape} in [-1, 1]",
    verbose,
  )
  return data


def make_sampler(
  dataset: str = "omniglot",
  split: str = "train",
  *,
  T: int = 8,
  K: int = 5,
  Q: int = 5,
  seed: int = 0,
  classes_per_task: int = 1,
  jitter: bool = False,
  process_index: int = 0,
  start_step: int = 0,
  **load_kwargs,
) -> TaskSampler:
  """``load_split(dataset, split, **load_kwargs)`` wrapped in a :class:`TaskSampler`.

  Example::

    sampler = make_sampler("omniglot", "train", T=8, K=5, Q=5, seed=0)
    for tasks in sampler.prefetch():   # Tasks(support [8,5,28,28,1], query [8,5,28,28,1])
      state = meta_step(state, tasks, key, config)
  """
  data = load_split(dataset, split, **load_kwargs)
  return TaskSampler(
    data,
    T,
    K,
    Q,
    seed=seed,
    classes_per_task=classes_per_task,
    jitter=jitter,
    process_index=process_index,
    start_step=start_step,
  )
