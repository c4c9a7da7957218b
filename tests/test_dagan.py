"""The DAGAN augmentation protocol (experiments/protocol/dagan.py): arms, t-test, subsets."""

import jax
import jax.numpy as jnp
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
  a = {"name": "a", "acc": {"real_gen": [4.0, 5.0, 6.0], "aug_gen": [1.0, 2.0, 3.0], "aug": [1.0]}}
  b = {"name": "b", "acc": {"real_gen": [1.0, 2.0, 3.0], "aug_gen": [3.0, 2.0, 1.0]}}
  c = dagan.contrast(a, b)
  assert c["real_gen"]["gain"] == 3.0 and np.isclose(c["real_gen"]["p"], 0.0213116, rtol=1e-4)
  assert c["aug_gen"]["gain"] == 0.0 and c["aug_gen"]["p"] == 1.0
  with pytest.raises(ValueError, match=r"row 'b' has no arm \['aug'\]"):
    dagan.contrast(a, b, arms=("aug",))


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


def test_pool_steps_are_evenly_spaced_at_the_share():
  steps = np.asarray(dagan.pool_steps(0.5, 8))
  np.testing.assert_array_equal(np.flatnonzero(steps), [1, 3, 5, 7])  # DAGAN's one in two
  np.testing.assert_array_equal(np.flatnonzero(dagan.pool_steps(0.25, 8)), [3, 7])
  assert int(np.sum(dagan.pool_steps(0.1, 1000))) == 100
  assert not np.any(dagan.pool_steps(0.0, 50)) and np.all(dagan.pool_steps(1.0, 50))
  gaps = np.diff(np.flatnonzero(dagan.pool_steps(0.3, 100)))
  assert set(gaps.tolist()) <= {3, 4}  # never two pool batches in a row, never a long gap


def test_fair_arms_schedules():
  arms = {a.name: a for a in dagan.fair_arms(share=0.25, weight=0.5)}
  assert list(arms) == ["real", "real_gen", "aug", "aug_gen", "aug_copies"]
  assert arms["real"].share == 0 and not arms["real"].augment_real
  assert arms["real_gen"].share == 0.5 and arms["real_gen"].weight == 1.0  # DAGAN's re-run arm
  assert not (arms["real_gen"].augment_real or arms["real_gen"].augment_pool)
  assert arms["aug"].augment_real and arms["aug"].share == 0
  g, c = arms["aug_gen"], arms["aug_copies"]
  assert (g.share, g.weight, g.augment_real, g.augment_pool) == (0.25, 0.5, True, True)
  assert (c.share, c.weight, c.augment_real, c.augment_pool) == (0.25, 0.5, True, True)
  assert g.pool == "generated" and c.pool == "support" and not c.uses_generated
  assert [a.name for a in dagan.arms_of(tiny(share=0.1, weight=2.0))] == list(arms)
  with pytest.raises(ValueError, match="share=1.5"):
    dagan.Arm("x", share=1.5)
  with pytest.raises(ValueError, match="pool='noise'"):
    dagan.Arm("x", pool="noise")


def test_each_arms_batch_plan_at_other_shares():
  """Step by step, as the trainer reads it: which steps take a pool batch, from which pool,
  whether it is augmented, and its weight."""
  arms = {a.name: a for a in dagan.fair_arms(share=0.25, weight=0.5)}
  steps = jnp.arange(8)
  plan = lambda name: {
    k: np.asarray(v) for k, v in dagan.batch_plan(dagan.arm_row(arms[name]), steps).items()
  }
  real, rg, aug, ag, ac = (plan(n) for n in arms)
  assert not real["pool"].any() and not real["augment"].any() and (real["weight"] == 1).all()
  np.testing.assert_array_equal(np.flatnonzero(rg["pool"]), [1, 3, 5, 7])  # one in two
  assert not rg["augment"].any() and not rg["copies"].any() and (rg["weight"] == 1).all()
  assert aug["augment"].all() and not aug["pool"].any()
  np.testing.assert_array_equal(np.flatnonzero(ag["pool"]), [3, 7])  # share 0.25
  assert ag["augment"].all() and not ag["copies"].any()  # generated batches augmented too
  np.testing.assert_array_equal(ag["weight"], np.where(ag["pool"], 0.5, 1.0))
  np.testing.assert_array_equal(ac["pool"], ag["pool"])  # the control: the same schedule,
  np.testing.assert_array_equal(ac["copies"], ac["pool"])  # every pool batch from the copies
  np.testing.assert_array_equal(ac["weight"], ag["weight"])
  tenth = dagan.batch_plan(dagan.arm_row(dagan.Arm("g", share=0.1, weight=2.0)), jnp.arange(1000))
  assert int(np.sum(tenth["pool"])) == 100
  assert float(np.sum(tenth["weight"])) == 900 + 2.0 * 100


def test_the_controls_pool_is_augmented_copies_of_the_supports():
  tr, _ = dagan.subsets(synthetic(), 4, 2, 0)
  key = jax.random.key(5)
  plain = dagan.copies_pool(tr, 10, key, (0.0, 0.0, 0.0))
  assert plain.shape == (2, 5, 10, 28, 28, 1)
  np.testing.assert_array_equal(plain, tr[:, :, np.arange(10) % 4])  # support j mod K
  aug = dagan.copies_pool(tr, 10, key, (0.075, 10.0, 0.1))
  assert not np.array_equal(aug, plain) and np.abs(aug).max() <= 1.0 + 1e-6
  np.testing.assert_array_equal(aug, dagan.copies_pool(tr, 10, key, (0.075, 10.0, 0.1)))


def test_known_answers_of_the_schedules():
  """Same initialisation, same draws: a pool of the K real images themselves makes
  ``real_gen`` the real arm and ``aug_gen`` the augmented arm exactly (so generated
  batches pass through the same augmentation as real ones); a generated pool that is the
  control's own pool makes ``aug_gen`` the control exactly."""
  tr, te = dagan.subsets(synthetic(), 4, 3, 0)
  got = dagan.train_arms(tiny(), tr, te, tr.copy())
  acc = got["acc"]
  np.testing.assert_array_equal(acc["real_gen"], acc["real"])
  np.testing.assert_array_equal(acc["aug_gen"], acc["aug"])
  assert not np.array_equal(acc["aug"], acc["real"])
  assert acc["real"].mean() > 0.6  # the CNN learns these classes from K = 4 (chance 0.2)
  assert got["curve_steps"] == [10, 20, 30, 40]
  assert got["curve"]["aug"].shape == (3, 4)
  np.testing.assert_array_equal(got["curve"]["aug"][:, -1], acc["aug"])
  c = tiny()
  aug = (c.dagan.aug_shift, c.dagan.aug_rotate, c.dagan.aug_scale)
  copies = dagan.copies_pool(tr, c.dagan.pool, jax.random.key(0 + 1_000_003), aug)
  same = dagan.train_arms(c, tr, te, copies)["acc"]
  np.testing.assert_array_equal(same["aug_gen"], same["aug_copies"])
  np.testing.assert_array_equal(same["aug_copies"], acc["aug_copies"])  # pool-independent
  # an arm whose generated batches skip the augmentation is another schedule
  unaug = dagan.Arm("aug_gen_plain", 0.5, 1.0, augment_real=True, augment_pool=False)
  arms = [*dagan.fair_arms()[:4], unaug]  # five arms: the program compiled above serves
  plain = dagan.train_arms(tiny(), tr, te, tr.copy(), arms)["acc"]["aug_gen_plain"]
  assert not np.array_equal(plain, acc["aug"])


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # an arm stuck at chance
def test_weights_and_the_control_pool():
  tr, te = dagan.subsets(synthetic(), 4, 3, 0)
  wrong = np.roll(tr, 1, axis=1)  # each class's pool holds the next class's images
  acc = dagan.train_arms(tiny(), tr, te, wrong)["acc"]
  assert acc["real_gen"].mean() < acc["real"].mean() - 0.2  # wrong labels hurt
  assert acc["aug_gen"].mean() < acc["aug"].mean() - 0.2
  assert acc["aug_copies"].mean() > acc["aug_gen"].mean() + 0.2  # the control never sees them
  # at weight 0 a pool batch moves nothing: its content cannot matter
  w0 = dagan.fair_arms(share=0.5, weight=0.0)
  a = dagan.train_arms(tiny(), tr, te, wrong, w0)["acc"]
  b = dagan.train_arms(tiny(), tr, te, tr.copy(), w0)["acc"]
  np.testing.assert_array_equal(a["aug_gen"], b["aug_gen"])
  np.testing.assert_array_equal(a["aug_gen"], a["aug_copies"])  # whatever the pool
  assert not np.array_equal(a["aug_copies"], acc["aug_copies"])  # the weight reaches the control
  tests = dagan.compare(acc)
  assert tests["real_gen vs real"]["gain"] < 0 and tests["aug_gen vs aug"]["gain"] < 0
  assert tests["aug_gen vs aug_copies"]["gain"] < 0


def test_a_second_classifier_with_normalisation_learns_too():
  tr, te = dagan.subsets(synthetic(), 4, 2, 0)
  arms = [dagan.Arm("real")]
  acc = dagan.train_arms(tiny(classifier="conv4", steps=60), tr, te, None, arms)["acc"]
  assert acc["real"].mean() > 0.6
  with pytest.raises(ValueError, match="dagan.classifier='resnet'"):
    dagan.train_arms(tiny(classifier="resnet"), tr, te, None, arms)


def test_converged_reads_the_last_doubling():
  curve = {"a": np.array([[0.1, 0.6, 0.602, 0.604]] * 2), "b": np.array([[0.1, 0.2, 0.3, 0.4]])}
  c = dagan.converged(curve, [25, 50, 75, 100])
  assert c["a"]["converged"] and np.isclose(c["a"]["change"], 0.004)  # 50 -> 100 steps
  assert not c["b"]["converged"] and np.isclose(c["b"]["change"], 0.2)
  c = dagan.converged({"a": np.array([[0.5, 0.6, 0.603]])}, [10, 20, 40])
  assert c["a"]["converged"]
  with pytest.raises(ValueError, match="steps / 2"):
    dagan.converged(curve, [30, 60, 100])


def test_prototype_filter_accepts_what_is_nearest_its_own_class():
  """Known answer: with the identity as embedding, a candidate leaning towards its own
  class's pattern is accepted with a margin that grows with the lean; one leaning towards
  another class's is rejected."""
  eye = np.eye(3, dtype=np.float32)
  support = np.repeat(eye.reshape(3, 1, 3, 1, 1), 2, axis=1)  # 3 classes, K = 2, 3-pixel images
  cand = np.zeros((3, 4, 3, 1, 1), np.float32)
  for c in range(3):
    other = (c + 1) % 3
    for m, (own_w, other_w) in enumerate([(1.0, 0.2), (0.2, 1.0), (1.0, 0.6), (1.0, 0.0)]):
      cand[c, m, c], cand[c, m, other] = own_w, other_w
  embed = lambda x: x.reshape(len(x), -1)
  f = dagan.prototype_filter(embed, support, cand)
  np.testing.assert_array_equal(f["accept"], [[True, False, True, True]] * 3)
  assert f["rate"] == 0.75
  unit = lambda v: np.asarray(v) / np.linalg.norm(v)
  want = [unit([1, 0.2])[0] - unit([1, 0.2])[1], unit([0.2, 1])[0] - unit([0.2, 1])[1]]
  np.testing.assert_allclose(f["margin"][:, :2], [want] * 3, rtol=1e-6)
  np.testing.assert_allclose(f["margin"][:, 3], 1.0)  # exactly its own pattern
  pool = dagan.select_pool(cand, f["accept"], f["margin"], 5)
  assert pool.shape == (3, 5, 3, 1, 1)
  # accepted ones by margin (3, 0, 2), then again in turn: never a rejected one
  np.testing.assert_array_equal(pool, cand[:, [3, 0, 2, 3, 0]])
  np.testing.assert_array_equal(
    dagan.select_pool(cand, f["accept"], f["margin"], 2), cand[:, [3, 0]]
  )
  none = dagan.select_pool(cand, np.zeros_like(f["accept"]), f["margin"], 2)
  np.testing.assert_array_equal(none, cand[:, [3, 0]])  # nothing accepted: the best margins
  with pytest.raises(ValueError, match="at least 2 classes"):
    dagan.prototype_filter(embed, support[:1], cand[:1])


def test_bad_arms_and_pools_are_named():
  tr, te = dagan.subsets(synthetic(), 4, 2, 0)
  gen = [dagan.Arm("real_gen", share=0.5)]
  with pytest.raises(ValueError, match="give pool_SxCxP"):
    dagan.train_arms(tiny(), tr, te, None, gen)
  with pytest.raises(ValueError, match="is not an Arm"):
    dagan.train_arms(tiny(), tr, te, None, ("mixup",))
  with pytest.raises(ValueError, match="leading axes"):
    dagan.train_arms(tiny(), tr, te, tr[:, :2], gen)
  with pytest.raises(ValueError, match="own name"):
    dagan.train_arms(tiny(), tr, te, None, [dagan.Arm("a"), dagan.Arm("a")])
  with pytest.raises(ValueError, match="curve_points=3"):
    dagan.train_arms(tiny(curve_points=3), tr, te, None, [dagan.Arm("a")])


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


def test_a_call_without_runs_trains_the_arms_that_use_no_samples(tmp_path):
  from experiments import dagan as dagan_cmd  # pylint: disable=g-import-not-at-top

  c = tiny(aug_rotate=10.0, aug_scale=0.1)
  out = dagan_cmd.run(c, str(tmp_path))
  assert out["rows"] == [] and set(out["base"]["acc"]) == {"real", "aug", "aug_copies"}
  assert set(out["converged"]) == {"real", "aug", "aug_copies"}
  assert out["curve_steps"] == [10, 20, 30, 40]
  md = dagan_cmd.markdown(out)
  assert "Without samples: real" in md and "rotations of up to 10 degrees" in md
  # every arm's curve on the page: one row per arm, one column per curve point, the means
  assert "| arm | 10 | 20 | 30 | 40 |" in md
  aug_row = [line for line in md.splitlines() if line.startswith("| aug |")]
  want = 100 * np.asarray(out["base"]["curve"]["aug"]).mean(0)
  assert aug_row == ["| aug | " + " | ".join(f"{v:.1f}" for v in want) + " |"]
  calls = []
  train = dagan.train_arms

  def counted(*args, **kw):
    calls.append(1)
    return train(*args, **kw)

  try:
    dagan.train_arms = counted
    again = dagan_cmd.run(c, str(tmp_path))  # the saved arms are reused, not trained again
    assert not calls
    c.dagan.aug_rotate = 5.0  # another augmentation: trained afresh, not read from the cache
    dagan_cmd.run(c, str(tmp_path))
    assert len(calls) == 1
  finally:
    dagan.train_arms = train
  np.testing.assert_array_equal(again["base"]["acc"]["aug"], out["base"]["acc"]["aug"])
