"""Bad input: one clear DataError (names the value, says the fix), before any sampling."""

import importlib.util

import numpy as np
import pytest

from metagan_jax import data

HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


def _toy(names, n=20):
  return data.ClassDataset(list(names), [np.zeros((n, 4, 4, 1), np.float32) for _ in names])


def _png(path, shape):
  from PIL import Image

  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.zeros(shape, np.uint8)).save(path)


def unknown_dataset(tmp):
  data.load_split("imagenet_fake")


def unknown_tfds_dataset(tmp):
  if not HAVE_TFDS:
    pytest.skip("tensorflow_datasets not installed")
  data.load_split("tfds:no_such_dataset_xyz", data_dir=tmp)


def unknown_split(tmp):
  data.load_split("omniglot", "dev")


def folder_missing(tmp):
  data.load_split("folder", "all", data_dir=tmp / "missing")


def npz_missing(tmp):
  data.load_split("npz", "all", data_dir=tmp / "missing.npz")


def omniglot_dir_missing(tmp):
  data.load_split("omniglot28", data_dir=tmp / "nope")


def folder_without_data_dir(tmp):
  data.load_split("folder")


def corrupt_npz(tmp):
  (tmp / "bad.npz").write_bytes(b"this is not a zip file")
  data.load_split("npz", "all", data_dir=tmp / "bad.npz")


def truncated_npz(tmp):
  np.savez(tmp / "ok.npz", a=np.zeros((50, 8, 8), np.uint8))
  raw = (tmp / "ok.npz").read_bytes()
  (tmp / "cut.npz").write_bytes(raw[: len(raw) // 2])
  data.load_split("npz", "all", data_dir=tmp / "cut.npz")


def corrupt_image(tmp):
  _png(tmp / "c" / "a.png", (8, 8))
  (tmp / "c" / "bad.png").write_bytes(b"\x89PNG garbage")
  data.load_split("folder", "all", data_dir=tmp)


def tfds_absent_no_download(tmp):
  if not HAVE_TFDS:
    pytest.skip("tensorflow_datasets not installed")
  data.load_split("mnist", data_dir=tmp / "tfds", download=False)


def k_plus_q_too_large(tmp):
  d = data.ClassDataset(
    ["images_background/Greek/character01", "images_background/Greek/character03"],
    [np.zeros((30, 4, 4, 1), np.float32), np.zeros((20, 4, 4, 1), np.float32)],
  )
  data.TaskSampler(d, T=2, K=15, Q=10)


def empty_split(tmp):
  np.savez(tmp / "two.npz", a=np.zeros((5, 8, 8), np.uint8), b=np.zeros((5, 8, 8), np.uint8))
  data.load_split("npz", "val", data_dir=tmp / "two.npz")


def empty_dataset_to_sampler(tmp):
  data.TaskSampler(data.ClassDataset([], [], source="my split"), T=1, K=1, Q=1)


def inconsistent_image_shapes(tmp):
  _png(tmp / "c1" / "a.png", (16, 16))
  _png(tmp / "c2" / "b.png", (20, 16))
  data.load_split("folder", "all", data_dir=tmp)


def empty_class_folder(tmp):
  _png(tmp / "c1" / "a.png", (16, 16))
  (tmp / "c2").mkdir()
  data.load_split("folder", "all", data_dir=tmp)


def non_finite_npz(tmp):
  x = np.zeros((4, 8, 8), np.float32)
  x[1, 2, 3] = np.nan
  np.savez(tmp / "nan.npz", ok=np.zeros((4, 8, 8), np.float32), x=x)
  data.load_split("npz", "all", data_dir=tmp / "nan.npz")


def float_out_of_range(tmp):
  np.savez(tmp / "big.npz", x=np.full((4, 8, 8), 2.0, np.float32))
  data.load_split("npz", "all", data_dir=tmp / "big.npz")


def unknown_val_alphabet(tmp):
  if data.find_omniglot28(required=False) is None:
    pytest.skip("offline Omniglot copy not found")
  data.load_split("omniglot28", "val", val_alphabets=("Klingon",))


def bad_channels(tmp):
  data.load_split("omniglot", channels=2)


def bad_T(tmp):
  data.TaskSampler(_toy(["a", "b"]), T=0, K=1, Q=1)


def too_many_classes_per_task(tmp):
  data.TaskSampler(_toy(["a", "b"]), T=1, K=1, Q=1, classes_per_task=3)


def unprocessed_images_to_sampler(tmp):
  data.TaskSampler(data.ClassDataset(["a"], [np.zeros((5, 4, 4, 1), np.uint8)]), T=1, K=1, Q=1)


CASES = [
  (unknown_dataset, r"unknown dataset 'imagenet_fake'.*'tfds:<name>'"),
  (unknown_tfds_dataset, r"unknown TFDS dataset 'no_such_dataset_xyz'.*list_builders"),
  (unknown_split, r"unknown split 'dev'; use one of"),
  (folder_missing, r"image folder '.*missing' does not exist"),
  (npz_missing, r"npz file '.*missing\.npz' does not exist"),
  (omniglot_dir_missing, r"offline Omniglot: data_dir='.*nope' does not exist"),
  (folder_without_data_dir, r"dataset='folder' needs data_dir"),
  (corrupt_npz, r"cannot read npz file '.*bad\.npz': not an \.npz \(zip\) archive"),
  (truncated_npz, r"cannot read npz file '.*cut\.npz': not an \.npz"),
  (corrupt_image, r"cannot read image .*bad\.png"),
  (
    tfds_absent_no_download,
    r"TFDS data for 'mnist' not found .*download=False"
    r".*tfds build mnist --data_dir.*download=True",
  ),
  (
    k_plus_q_too_large,
    r"K \+ Q = 15 \+ 10 = 25 exceeds the 20 images of class 'images_background/Greek/character03'"
    r".*lower K or Q",
  ),
  (empty_split, r"split 'val' of npz file .* is empty.*split='all'"),
  (empty_dataset_to_sampler, r"no classes to sample from my split \(empty split\)"),
  (
    inconsistent_image_shapes,
    r"image .*c2/b\.png has shape \(20, 16, 1\).*c1/a\.png has \(16, 16, 1\)",
  ),
  (empty_class_folder, r"class folder '.*c2' holds no images"),
  (non_finite_npz, r"class 'x' in .*nan\.npz has 1 non-finite values"),
  (float_out_of_range, r"class 'x' .* must lie in \[0, 1\], got \[2, 2\]"),
  (unknown_val_alphabet, r"validation alphabets \['Klingon'\] are not background alphabets"),
  (bad_channels, r"channels must be 1 or 3, got 2"),
  (bad_T, r"T must be an integer >= 1, got 0"),
  (too_many_classes_per_task, r"classes_per_task=3 but the split has only 2 classes"),
  (unprocessed_images_to_sampler, r"class 'a' is uint8; the sampler takes preprocessed float32"),
]


@pytest.mark.parametrize("case,pattern", CASES, ids=[c.__name__ for c, _ in CASES])
def test_bad_input_raises_clear_data_error(case, pattern, tmp_path):
  with pytest.raises(data.DataError, match=pattern):
    case(tmp_path)


def test_data_error_is_a_value_error():
  assert issubclass(data.DataError, ValueError)
