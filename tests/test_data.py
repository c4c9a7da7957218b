"""Data layer without TensorFlow: offline Omniglot, splits, preprocessing, sampler, folder/npz."""

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from metagan_jax import data
from metagan_jax.data import preprocess as pp
from metagan_jax.data import splits
from metagan_jax.tasks import Tasks
from tests.helpers import HANG_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def omniglot_dir():
  path = data.find_omniglot28(required=False)
  if path is None:
    if os.environ.get("CI"):
      pytest.fail("CI must have the offline Omniglot copy at ../shared/data/omniglot28.")
    pytest.skip("offline Omniglot copy not found (../shared/data/omniglot28)")
  return path


@pytest.fixture(scope="module")
def val_split(omniglot_dir):
  return data.load_split("omniglot28", "val", data_dir=omniglot_dir, verbose=False)


@pytest.fixture(scope="module")
def sampler(val_split):
  return data.TaskSampler(val_split, T=8, K=5, Q=5, seed=0)


def _toy(counts=(20, 20, 20, 20), size=8, seed=0):
  """A small preprocessed dataset whose every image is unique."""
  rng = np.random.default_rng(seed)
  images = [rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32) for n in counts]
  return data.ClassDataset([f"c{i}" for i in range(len(counts))], images, source="toy")


# --- offline Omniglot and its split -------------------------------------------------


def test_import_and_offline_sources_do_not_import_tensorflow(tmp_path, omniglot_dir):
  np.savez(
    tmp_path / "mine.npz", a=np.zeros((6, 28, 28), np.uint8), b=np.ones((6, 28, 28), np.uint8)
  )
  script = textwrap.dedent(f"""
      import sys
      class Block:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError("blocked: " + name)
      sys.meta_path.insert(0, Block())
      from metagan_jax import data
      s = data.make_sampler("omniglot", "val", data_dir={str(omniglot_dir)!r}, T=2, K=1, Q=1,
                            verbose=False)
      next(iter(s))
      data.load_split("npz", "all", data_dir={str(tmp_path / "mine.npz")!r}, verbose=False)
      try:
        data.load_split("mnist", verbose=False)
      except data.DataError as e:
        assert "pip install" in str(e), e
      else:
        raise AssertionError("mnist without TFDS must fail")
      tf = ("tensorflow", "tensorflow_datasets")
      assert not [m for m in sys.modules if m.split(".")[0] in tf]
      print("OK")
  """)
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    JAX_PLATFORMS="cpu",
  )
  out = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S
  )
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_find_omniglot28_env_and_default(monkeypatch, omniglot_dir, tmp_path):
  monkeypatch.delenv(data.omniglot.ENV_VAR, raising=False)
  if omniglot_dir in data.omniglot.default_locations():
    assert data.find_omniglot28() == omniglot_dir  # the default beside the repo
  monkeypatch.setattr(data.omniglot, "default_locations", lambda: [tmp_path / "none"])
  assert data.find_omniglot28(required=False) is None
  assert data.find_omniglot28(omniglot_dir) == omniglot_dir.resolve()  # the argument
  monkeypatch.setenv(data.omniglot.ENV_VAR, str(omniglot_dir))
  assert data.find_omniglot28() == omniglot_dir.resolve()
  monkeypatch.setenv(data.omniglot.ENV_VAR, str(tmp_path))  # set but wrong: an error, no fallback
  with pytest.raises(data.DataError, match="METAGAN_OMNIGLOT28_DIR.*lacks"):
    data.find_omniglot28()


def test_offline_omniglot_raw_format(omniglot_dir):
  bg = data.load_omniglot28("background", omniglot_dir)
  ev = data.load_omniglot28("evaluation", omniglot_dir)
  assert (len(bg), len(ev)) == (964, 659)
  assert (len(set(bg.groups)), len(set(ev.groups))) == (30, 20)
  assert bg.images[0].shape == (20, 28, 28, 1) and bg.images[0].dtype == np.uint8
  assert set(np.unique(bg.images[0])) <= {0, 255}
  assert bg.names == sorted(bg.names) and bg.names[0].startswith("images_background/")


def test_omniglot_splits_disjoint_by_class_and_alphabet(omniglot_dir):
  bg = data.load_omniglot28("background", omniglot_dir)
  ev = data.load_omniglot28("evaluation", omniglot_dir)
  by = splits.omniglot_split(bg, ev)
  assert (len(by["train"]), len(by["val"]), len(by["test"])) == (836, 128, 659)
  names = {s: set(v) for s, v in by.items()}
  assert not (
    names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"]
  )
  assert len(names["train"] | names["val"]) == 964
  alphabet = lambda n: n.split("/")[1]
  alphabets = {s: {alphabet(n) for n in v} for s, v in by.items()}
  assert alphabets["val"] == set(splits.OMNIGLOT_VAL_ALPHABETS)
  assert not (
    alphabets["train"] & alphabets["val"]
    or alphabets["train"] & alphabets["test"]
    or alphabets["val"] & alphabets["test"]
  )
  splits.check_disjoint(by)


def test_load_split_writes_split_json_and_rotates_train_only(omniglot_dir, tmp_path):
  train = data.load_split(
    "omniglot", "train", data_dir=omniglot_dir, run_dir=tmp_path, verbose=False
  )
  assert len(train) == 4 * 836  # rotations: on for meta-train by default
  doc = json.loads((tmp_path / "split.json").read_text())
  assert doc["counts"] == {"train": 836, "val": 128, "test": 659}
  assert doc["val_alphabets"] == list(splits.OMNIGLOT_VAL_ALPHABETS)
  base = {n.split("/rot")[0] for n in train.names}
  assert base == set(doc["splits"]["train"])
  test = data.load_split("omniglot", "test", data_dir=omniglot_dir, verbose=False)
  assert len(test) == 659  # no rotations off meta-train
  assert not base & set(test.names)


def test_preprocessed_values(val_split):
  x = np.stack(val_split.images)
  assert x.dtype == np.float32 and x.shape == (128, 20, 28, 28, 1)
  assert x.min() == -1.0 and x.max() == 1.0
  assert set(np.unique(x)) == {-1.0, 1.0}  # binary source stays binary
  assert (x == -1).mean() > 0.8  # inverted: background -1, strokes +1


def test_resize_and_channels(omniglot_dir):
  d = data.load_split(
    "omniglot28", "val", data_dir=omniglot_dir, image_size=32, channels=3, verbose=False
  )
  x = d.images[0]
  assert x.shape == (20, 32, 32, 3) and x.dtype == np.float32
  assert -1 <= x.min() and x.max() <= 1
  np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_resize_area_and_bilinear_preserve_constant_and_mean():
  x = np.random.default_rng(0).uniform(0, 1, (2, 105, 105, 1)).astype(np.float32)
  small = pp.resize(x, 28)
  np.testing.assert_allclose(small.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=1e-4)
  ones = pp.resize(np.ones((1, 28, 28, 1), np.float32), 64)
  np.testing.assert_allclose(ones, 1.0, rtol=1e-6)
  wide = pp.resize(np.ones((1, 20, 30, 1), np.float32), 10)  # centre-cropped to a square
  assert wide.shape == (1, 10, 10, 1)


def test_rotation_augmentation_quadruples_and_rotates(val_split):
  rot = data.add_rotations(val_split)
  assert len(rot) == 4 * len(val_split)
  i = rot.names.index(val_split.names[3] + "/rot90")
  np.testing.assert_array_equal(rot.images[i], np.rot90(val_split.images[3], 1, axes=(1, 2)))
  j = rot.names.index(val_split.names[3] + "/rot270")
  np.testing.assert_array_equal(rot.images[j], np.rot90(val_split.images[3], 3, axes=(1, 2)))
  assert rot.groups[i] == val_split.groups[3]


# --- the sampler -----------------------------------------------------------------


def test_sampler_shapes_dtype_range(sampler):
  tasks = sampler.batch(0)
  assert isinstance(tasks, Tasks)
  assert tasks.support.shape == (8, 5, 28, 28, 1) and tasks.query.shape == (8, 5, 28, 28, 1)
  assert tasks.support.dtype == np.float32 and tasks.query.dtype == np.float32
  assert -1 <= tasks.support.min() and tasks.support.max() <= 1


def test_support_and_query_distinct_images_of_one_class(sampler, val_split):
  for step in range(20):
    cls, idx = sampler.indices(step)
    tasks = sampler.batch(step)
    assert len(set(cls[:, 0].tolist())) == 8  # distinct classes in a batch
    for t in range(8):
      assert (cls[t] == cls[t, 0]).all()
      assert len(set(idx[t].tolist())) == 10  # without replacement
      imgs = val_split.images[cls[t, 0]]
      got = np.concatenate([tasks.support[t], tasks.query[t]])
      np.testing.assert_array_equal(got, imgs[idx[t]])
      # Identity by content too: every image is one of that class's images.
      flat = imgs.reshape(20, -1)
      for g in got.reshape(10, -1):
        assert (flat == g).all(axis=1).any()


def test_unequal_class_counts_never_sample_padding():
  d = _toy(counts=(6, 20, 7, 30))
  s = data.TaskSampler(d, T=4, K=3, Q=3, seed=1)
  for step in range(50):
    cls, idx = s.indices(step)
    assert (idx < s.counts_C[cls]).all()
    tasks = s.batch(step)
    for t in range(4):
      np.testing.assert_array_equal(tasks.support[t], d.images[cls[t, 0]][idx[t, :3]])


def test_large_classes_use_per_task_draws():
  d = _toy(counts=(300, 400), size=4)
  s = data.TaskSampler(d, T=3, K=5, Q=5, seed=0)  # T > classes: classes repeat
  cls, idx = s.indices(0)
  assert cls.shape == (3, 10)
  for t in range(3):
    assert len(set(idx[t].tolist())) == 10 and (idx[t] < s.counts_C[cls[t, 0]]).all()


def test_mixed_class_tasks():
  d = _toy(counts=(5, 6, 7, 8, 9))
  s = data.TaskSampler(d, T=2, K=4, Q=4, seed=3, classes_per_task=2)
  for step in range(30):
    cls, idx = s.indices(step)
    tasks = s.batch(step)
    for t in range(2):
      assert len(set(cls[t].tolist())) <= 2
      pairs = set(zip(cls[t].tolist(), idx[t].tolist()))
      assert len(pairs) == 8 and all(i < s.counts_C[c] for c, i in pairs)
      np.testing.assert_array_equal(tasks.query[t, 0], d.images[cls[t, 4]][idx[t, 4]])


def test_deterministic_from_seed(val_split, sampler):
  same = data.TaskSampler(val_split, T=8, K=5, Q=5, seed=0)
  other = data.TaskSampler(val_split, T=8, K=5, Q=5, seed=1)
  host1 = data.TaskSampler(val_split, T=8, K=5, Q=5, seed=0, process_index=1)
  a, b = sampler.batch(7), same.batch(7)
  np.testing.assert_array_equal(a.support, b.support)
  np.testing.assert_array_equal(a.query, b.query)
  assert not np.array_equal(a.support, other.batch(7).support)
  assert not np.array_equal(a.support, host1.batch(7).support)
  assert not np.array_equal(a.support, sampler.batch(8).support)


def test_restart_from_saved_position(val_split):
  s = data.TaskSampler(val_split, T=4, K=2, Q=3, seed=5)
  first = [next(s) for _ in range(10)]
  assert s.state()["step"] == 10
  resumed = data.TaskSampler(val_split, T=4, K=2, Q=3, seed=5)
  resumed.restore({"step": 5, "seed": 5})
  started = data.TaskSampler(val_split, T=4, K=2, Q=3, seed=5, start_step=5)
  for want in first[5:]:
    for got in (next(resumed), next(started)):
      np.testing.assert_array_equal(got.support, want.support)
      np.testing.assert_array_equal(got.query, want.query)
  with pytest.raises(data.DataError, match="seed 9"):
    resumed.restore({"step": 1, "seed": 9})


def test_prefetch_matches_plain_iteration_and_tracks_position(val_split):
  plain = data.TaskSampler(val_split, T=4, K=2, Q=2, seed=2)
  want = [next(plain) for _ in range(6)]
  s = data.TaskSampler(val_split, T=4, K=2, Q=2, seed=2)
  with s.prefetch(size=3) as it:
    got = [next(it) for _ in range(3)]
    assert s.state()["step"] == 3  # the thread is ahead; the position is not
  assert isinstance(got[0].support, jax.Array)
  with s.prefetch(size=2, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])) as it:
    got += [next(it) for _ in range(3)]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g.support), w.support)
    np.testing.assert_array_equal(np.asarray(g.query), w.query)
  with s.prefetch(device_put=False) as it:
    assert isinstance(next(it).support, np.ndarray)


def test_prefetch_reraises_worker_errors_and_stops():
  class Broken(data.TaskSampler):
    def batch(self, step):
      if step == 2:
        raise RuntimeError("boom at 2")
      return super().batch(step)

  s = Broken(_toy(), T=2, K=2, Q=2)
  it = s.prefetch()
  next(it), next(it)
  with pytest.raises(RuntimeError, match="boom at 2"):
    next(it)
  assert s.step == 2
  it._thread.join(timeout=60)
  assert not it._thread.is_alive()


def test_unclosed_prefetcher_stops_when_dropped():
  it = data.TaskSampler(_toy(), T=2, K=2, Q=2).prefetch(size=1)
  next(it)
  thread = it._thread
  del it
  gc.collect()
  thread.join(timeout=60)
  assert not thread.is_alive()


def test_jitter_deterministic_small_and_identity_at_zero(val_split):
  s = data.TaskSampler(val_split, T=8, K=5, Q=5, seed=0, jitter=True)
  a, b = s.batch(4), s.batch(4)
  np.testing.assert_array_equal(a.support, b.support)
  plain = data.TaskSampler(val_split, T=8, K=5, Q=5, seed=0).batch(4)
  assert not np.array_equal(a.support, plain.support)
  assert a.support.dtype == np.float32 and -1 <= a.support.min() and a.support.max() <= 1
  # Small: mean stroke mass moves little.
  np.testing.assert_allclose(a.support.mean(), plain.support.mean(), atol=0.05)
  x = plain.support.reshape(-1, 28, 28, 1)
  same = pp.jitter(x, np.random.default_rng(0), max_shift=0, max_degrees=0)
  np.testing.assert_allclose(same, x, atol=1e-6)
  shifted = pp.jitter(x, np.random.default_rng(0), max_shift=1e-9, max_degrees=0)
  np.testing.assert_allclose(shifted, x, atol=1e-5)


# --- a user's own data -------------------------------------------------------------


def _write_pngs(root: Path, classes=3, per_class=6, size=(32, 32), mode="L"):
  from PIL import Image

  rng = np.random.default_rng(0)
  arrays = {}
  for c in range(classes):
    d = root / f"style{c}"
    d.mkdir(parents=True)
    arrays[d.name] = []
    for i in range(per_class):
      shape = size[::-1] if mode == "L" else (*size[::-1], 3)
      a = rng.integers(0, 256, shape, dtype=np.uint8)
      Image.fromarray(a, mode).save(d / f"img{i:02d}.png")
      arrays[d.name].append(a)
  return arrays


def test_folder_source_reads_pngs(tmp_path):
  arrays = _write_pngs(tmp_path)
  raw = data.load_folder(tmp_path)
  assert raw.names == ["style0", "style1", "style2"]
  np.testing.assert_array_equal(raw.images[1][2, ..., 0], arrays["style1"][2])
  d = data.load_split("folder", "all", data_dir=tmp_path, image_size=16, verbose=False)
  assert len(d) == 3 and d.images[0].shape == (6, 16, 16, 1)
  assert d.images[0].dtype == np.float32 and -1 <= d.images[0].min() and d.images[0].max() <= 1
  s = data.TaskSampler(d, T=2, K=3, Q=3, seed=0)
  assert next(s).support.shape == (2, 3, 16, 16, 1)


def test_folder_of_photos_is_one_class_with_resize_each(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)
  for i in range(30):  # "30 photos of my own style", mixed sizes, RGB
    h, w = (40, 50) if i % 2 else (60, 45)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.jpg")
  d = data.load_split(
    "folder", "all", data_dir=tmp_path, image_size=32, channels=3, resize_each=True, verbose=False
  )
  assert d.names == [tmp_path.name] and d.images[0].shape == (30, 32, 32, 3)
  tasks = data.TaskSampler(d, T=1, K=10, Q=5, seed=0).batch(0)
  assert tasks.support.shape == (1, 10, 32, 32, 3)


def test_npz_round_trip_and_float_input(tmp_path, val_split):
  raw = data.ClassDataset(
    ["a/x", "a/y", "b/z"], [np.full((5, 28, 28), v, np.uint8) for v in (0, 128, 255)]
  )
  data.save_npz(tmp_path / "u8.npz", raw)
  back = data.load_npz(tmp_path / "u8.npz")
  assert back.names == raw.names and back.groups == ["a", "a", "b"]
  for a, b in zip(raw.images, back.images):
    np.testing.assert_array_equal(a[..., None], b)
  np.savez(tmp_path / "f.npz", k=np.linspace(0, 1, 4 * 28 * 28, dtype=np.float32).reshape(4, 784))
  f = data.load_split("npz", "all", data_dir=tmp_path / "f.npz", verbose=False)
  assert f.images[0].shape == (4, 28, 28, 1)
  np.testing.assert_allclose([f.images[0].min(), f.images[0].max()], [-1, 1], atol=1e-6)


def test_seeded_class_split_is_disjoint_deterministic_and_written(tmp_path):
  raw = data.ClassDataset([f"k{i}" for i in range(10)], [np.zeros((4, 8, 8), np.uint8)] * 10)
  data.save_npz(tmp_path / "ten.npz", raw)
  a = splits.class_split(raw, seed=0)
  assert a == splits.class_split(raw, seed=0) and a != splits.class_split(raw, seed=1)
  assert [len(a[s]) for s in ("train", "val", "test")] == [7, 1, 2]
  assert sorted(sum(a.values(), [])) == sorted(raw.names)
  run = tmp_path / "run"
  train = data.load_split(
    "npz", "train", data_dir=tmp_path / "ten.npz", split_seed=0, run_dir=run, verbose=False
  )
  written = data.read_split(run)
  assert written == a and train.names == a["train"]
  assert json.loads((run / "split.json").read_text())["split_seed"] == 0


def test_class_split_keeps_groups_together():
  names = [f"g{g}/c{c}" for g in range(6) for c in range(3)]
  d = data.ClassDataset(
    names, [np.zeros((2, 4, 4), np.uint8)] * 18, [n.split("/")[0] for n in names]
  )
  by = splits.class_split(d, seed=4, fractions=(0.5, 0.25, 0.25))
  groups = {s: {n.split("/")[0] for n in v} for s, v in by.items()}
  assert not (
    groups["train"] & groups["val"]
    or groups["train"] & groups["test"]
    or groups["val"] & groups["test"]
  )


def test_blur_keeps_a_constant_background_and_the_mean():
  img = np.full((1, 28, 28, 1), -1.0, np.float32)
  np.testing.assert_allclose(data.blur(img, 0.7), img, atol=1e-6)  # borders renormalised
  img[0, 10:18, 14, 0] = 1.0  # a 1-pixel vertical stroke
  out = data.blur(img, 0.7)
  assert out[0, 14, 14, 0] < 1.0 and out[0, 14, 13, 0] > -1.0  # softened sideways
  np.testing.assert_allclose(out.mean(), img.mean(), atol=1e-3)
  np.testing.assert_array_equal(data.blur(img, 0.0), img)
