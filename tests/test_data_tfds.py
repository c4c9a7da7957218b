"""TFDS source, with tfds.testing.mock_data only (no network).

Skipped when tensorflow_datasets is not installed (pip install 'metagan_jax[data]').
"""

import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

from metagan_jax import data  # noqa: E402
from metagan_jax.data import omniglot, tfds_source  # noqa: E402

ALPHABETS = ("Greek", "Korean", "Latin")  # background alphabets fed to the fake TFDS omniglot


@pytest.fixture(scope="module")
def offline_dir():
  path = data.find_omniglot28(required=False)
  if path is None:
    if os.environ.get("CI"):
      pytest.fail("CI must have the offline Omniglot copy at ../shared/data/omniglot28.")
    pytest.skip("offline Omniglot copy not found")
  return path


@pytest.fixture(scope="module")
def fake_omniglot(offline_dir):
  """TFDS-format examples (105x105x3, TFDS alphabet numbering) made from the offline copy."""
  bg = data.load_omniglot28("background", offline_dir)
  ev = data.load_omniglot28("evaluation", offline_dir)
  all50 = sorted(set(bg.groups) | set(ev.groups))  # TFDS: alphabet names sorted over both sets
  out = {}
  for split, src, alphabets in (("train", bg, ALPHABETS), ("test", ev, ("Angelic",))):
    ex = {"image": [], "alphabet": [], "alphabet_char_id": [], "label": []}
    picked = [
      i
      for i, (n, g) in enumerate(zip(src.names, src.groups))
      if g in alphabets and int(n[-2:]) <= 3
    ]
    for i in picked:
      up = data.preprocess.resize(src.images[i].astype(np.float32), 105)  # 28 -> 105 bilinear
      up = np.clip(np.rint(np.repeat(up, 3, axis=-1)), 0, 255).astype(np.uint8)
      ex["image"].append(up)
      n = len(up)
      ex["alphabet"] += [all50.index(src.groups[i])] * n
      ex["alphabet_char_id"] += [int(src.names[i][-2:]) - 1] * n
      ex["label"] += [i] * n
    out[split] = (
      {k: np.concatenate(v) if k == "image" else np.array(v, np.int64) for k, v in ex.items()},
      [src.names[i] for i in picked],
      all50,
    )
  return out


def _mock_omniglot(fake):
  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, decoders, read_config, shuffle_files
    return tf.data.Dataset.from_tensor_slices(fake[str(split)][0])

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_tfds_omniglot_matches_offline_names_and_images(fake_omniglot, offline_dir):
  with _mock_omniglot(fake_omniglot):
    got = tfds_source.load_tfds_omniglot("background", download=True)
  ex, names, all50 = fake_omniglot["train"]
  # Under the mock, TFDS alphabet names are their numbers: map offline names to them.
  as_tfds = [n.replace(f"/{a}/", f"/{all50.index(a)}/") for n in names for a in [n.split("/")[1]]]
  assert got.names == sorted(as_tfds)
  assert got.images[0].shape == (20, 28, 28, 1) and got.images[0].dtype == np.uint8
  offline = data.load_omniglot28("background", offline_dir)
  for name, imgs in zip(got.names, got.images):
    alpha_id = int(name.split("/")[1])
    ref = offline.images[offline.names.index(name.replace(f"/{alpha_id}/", f"/{all50[alpha_id]}/"))]
    # Same storage (white background); 28->105->28 resampling only softens edges.
    a = imgs.astype(np.float32) / 255
    b = ref.astype(np.float32) / 255
    assert np.abs(a - b).mean() < 0.05
    np.testing.assert_allclose(a.mean(), b.mean(), atol=0.005)  # area resizing keeps ink mass


def test_omniglot_falls_back_to_tfds_with_a_message(fake_omniglot, monkeypatch, tmp_path, capsys):
  monkeypatch.delenv(omniglot.ENV_VAR, raising=False)
  monkeypatch.setattr(omniglot, "default_locations", lambda: [tmp_path / "nowhere"])
  with _mock_omniglot(fake_omniglot):
    val_alphabet = str(fake_omniglot["train"][2].index("Korean"))
    train = data.load_split(
      "omniglot", "train", val_alphabets=(val_alphabet,), download=True, run_dir=tmp_path / "run"
    )
    test = data.load_split("omniglot", "test", val_alphabets=(val_alphabet,), download=True)
  err = capsys.readouterr().err
  assert "falling back to TFDS omniglot" in err and "from TFDS omniglot" in err
  assert len(train) == 4 * 6  # 2 alphabets x 3 characters, x4 rotations
  assert len(test) == 3
  x = np.stack(train.images)
  assert x.dtype == np.float32 and x.shape[1:] == (20, 28, 28, 1)
  assert -1 <= x.min() and x.max() <= 1 and (x < 0).mean() > 0.7  # inverted like offline
  assert (tmp_path / "run" / "split.json").exists()


def test_tfds_mnist_and_cifar_with_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=300):
    d = data.load_split(
      "mnist",
      "train",
      data_dir=tmp_path,
      download=True,
      split_seed=0,
      run_dir=tmp_path / "run",
      verbose=False,
    )
    c = data.load_split(
      "tfds:cifar10",
      "test",
      data_dir=tmp_path,
      download=True,
      image_size=32,
      channels=3,
      verbose=False,
    )
  assert len(d) == 7  # 10 labels -> 7/1/2 classes
  assert d.images[0].shape[1:] == (28, 28, 1) and d.images[0].dtype == np.float32
  assert len(c) == 2 and c.images[0].shape[1:] == (32, 32, 3)
  split = data.read_split(tmp_path / "run")
  assert not set(split["train"]) & set(split["test"])
  tasks = data.TaskSampler(d, T=4, K=3, Q=3, seed=0).batch(0)
  assert tasks.support.shape == (4, 3, 28, 28, 1)
  assert -1 <= tasks.support.min() and tasks.support.max() <= 1
