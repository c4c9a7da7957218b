"""The DAGAN augmentation protocol (experiments/protocol/dagan.py): arms, t-test, subsets."""

import numpy as np
import pytest

from experiments.configs import dagan as dagan_cfg
from experiments.protocol import dagan


def tiny(**kw):
  c = dagan_cfg.tiny_config()
  c.dagan.update(kw)
  return c


def synthetic(C=5, N=8, seed=0):
  """C classes of N noisy copies of one random stroke pattern each: learnable from K = 4."""
  rng = np.random.default_rng(seed)
  protos = np.where(rng.random((C, 1, 28, 28, 1)) < 0.15, 1.0, -1.0)
  flip = rng.random((C, N, 28, 28, 1)) < 0.15
  return np.where(flip, -protos, protos).astype(np.float32)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # constant differences
def test_ttest_gives_the_textbook_two_sample_answer():
  r = dagan.ttest([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
  # Student's t with pooled variance 1: t = 3 / sqrt(2/3) = 3.674, 4 dof, p = 0.02131
  assert r["gain"] == 3.0
  np.testing.assert_allclose(r["t"], 3.6742346, rtol=1e-6)
  np.testing.assert_allclose(r["p"], 0.0213116, rtol=1e-4)
  np.testing.assert_allclose(r["confidence"], 1 - 0.0213116 / 2, rtol=1e-6)
  np.testing.assert_allclose(r["p_paired"], 0.0, atol=1e-12)  # every pair differs by exactly 3
  assert dagan.ttest([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])["confidence"] < 0.5


def test_contrast_compares_two_rows_arm_by_arm_and_names_a_missing_arm():
  a = {"name": "a", "acc": {"gen": [4.0, 5.0, 6.0], "gen_jitter": [1.0, 2.0, 3.0], "jitter": [1.0]}}
  b = {"name": "b", "acc": {"gen": [1.0, 2.0, 3.0], "gen_jitter": [3.0, 2.0, 1.0]}}
  c = dagan.contrast(a, b)
  assert c["gen"]["gain"] == 3.0 and np.isclose(c["gen"]["p"], 0.0213116, rtol=1e-4)
  assert c["gen_jitter"]["gain"] == 0.0 and c["gen_jitter"]["p"] == 1.0
  with pytest.raises(ValueError, match=r"row 'b' has no arm \['jitter'\]"):
    dagan.contrast(a, b, arms=("jitter",))


def test_subsets_split_each_class_into_disjoint_train_and_test_images():
  x = np.arange(3 * 6, dtype=np.float32).reshape(3, 6, 1, 1, 1) * np.ones((1, 1, 2, 2, 1))
  tr, te = dagan.subsets(x, k=2, n_subsets=4, seed=0)
  assert tr.shape == (4, 3, 2, 2, 2, 1) and te.shape == (4, 3, 4, 2, 2, 1)
  for s in range(4):
    for c in range(3):
      ids = sorted(tr[s, c, :, 0, 0, 0].tolist() + te[s, c, :, 0, 0, 0].tolist())
      assert ids == x[c, :, 0, 0, 0].tolist()  # each image once, in its own class
  assert not np.array_equal(tr[0], tr[1])  # another K-subset per classifier
  np.testing.assert_array_equal(dagan.subsets(x, 2, 4, 0)[0], tr)  # same seed, same subsets
  with pytest.raises(ValueError, match="dagan.k=6"):
    dagan.subsets(x, k=6, n_subsets=1, seed=0)


def test_a_pool_of_the_real_images_is_the_real_arm_and_zero_shift_jitter_too():
  """Known answers: generated batches that are the K real images give the real arm's
  accuracy exactly (same initialisation, same draws), as does jitter of 0 px."""
  tr, te = dagan.subsets(synthetic(), 4, 3, 0)
  acc = dagan.train_arms(tiny(shift=0.0), tr, te, tr.copy(), ("real", "gen", "jitter"))
  np.testing.assert_array_equal(acc["gen"], acc["real"])
  np.testing.assert_array_equal(acc["jitter"], acc["real"])
  assert acc["real"].mean() > 0.6  # the CNN learns these classes from K = 4 (chance 0.2)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # an arm stuck at chance
def test_wrong_class_pool_hurts_and_jitter_changes_the_schedule():
  tr, te = dagan.subsets(synthetic(), 4, 3, 0)
  wrong = np.roll(tr, 1, axis=1)  # each class's pool holds the next class's images
  acc = dagan.train_arms(tiny(), tr, te, wrong)
  assert set(acc) == set(dagan.ARMS) and all(v.shape == (3,) for v in acc.values())
  assert acc["gen"].mean() < acc["real"].mean() - 0.2
  assert acc["gen_jitter"].mean() < acc["jitter"].mean() - 0.2
  assert not np.array_equal(acc["jitter"], acc["real"])
  tests = dagan.compare(acc)
  assert tests["gen-real"]["gain"] < 0 and tests["gen_jitter-jitter"]["gain"] < 0


def test_bad_arms_and_pools_are_named():
  tr, te = dagan.subsets(synthetic(), 4, 2, 0)
  with pytest.raises(ValueError, match="give pool_SxCxP"):
    dagan.train_arms(tiny(), tr, te, None, ("gen",))
  with pytest.raises(ValueError, match="arm 'mixup'"):
    dagan.train_arms(tiny(), tr, te, None, ("mixup",))
  with pytest.raises(ValueError, match="leading axes"):
    dagan.train_arms(tiny(), tr, te, tr[:, :2], ("gen",))


def test_classes_come_from_the_named_split_spread_over_alphabets():
  from experiments.configs import common  # pylint: disable=g-import-not-at-top

  c = common.base_config()
  c.dagan = tiny(num_classes=10).dagan
  val = dagan.dagan_classes(c, "val")
  assert val["images"].shape == (10, 20, 28, 28, 1) and len(set(val["names"])) == 10
  assert len({n.split("/")[1] for n in val["names"]}) == 5  # every validation alphabet
  test = dagan.dagan_classes(c, "test")
  assert not set(val["names"]) & set(test["names"])
  with pytest.raises(ValueError, match="'train'"):
    dagan.dagan_classes(c, "train")
  c.dagan.num_classes = 10_000
  with pytest.raises(ValueError, match="dagan.num_classes=10000"):
    dagan.dagan_classes(c, "val")
