"""Metric code against known cases: KID, Frechet distance, bootstrap CI, paired test."""

import numpy as np
import pytest

from metagan_jax import metrics


def test_kid_same_distribution_is_zero_on_average_and_unbiased():
  rng = np.random.default_rng(0)
  vals = np.array(
    [metrics.kid(rng.normal(size=(50, 8)), rng.normal(size=(40, 8))) for _ in range(300)]
  )
  se = vals.std(ddof=1) / np.sqrt(len(vals))
  assert abs(vals.mean()) < 3 * se + 1e-12, (vals.mean(), se)
  assert (vals < 0).any() and (vals > 0).any()  # unbiased: negative values occur


def test_kid_large_set_with_itself_is_near_zero_and_shift_is_positive():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2000, 8))
  assert abs(metrics.kid(x, x)) < 1e-2 * metrics.kid(x, x + 1.0)
  assert metrics.kid(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 0.5) > 0


def test_kid_linear_kernel_matches_closed_form():
  # With k(x, y) = x.y the population MMD^2 is |mu_x - mu_y|^2; the unbiased
  # estimate averages to it.
  rng = np.random.default_rng(2)
  shift = np.array([0.3, -0.2, 0.1])
  lin = lambda a, b: a @ b.T
  vals = [
    metrics.kid(rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) + shift, kernel=lin)
    for _ in range(2000)
  ]
  assert np.mean(vals) == pytest.approx(np.sum(shift**2), abs=0.01)


def test_frechet_identical_gaussians_is_zero():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(5, 5))
  cov = a @ a.T + 0.1 * np.eye(5)
  mu = rng.normal(size=5)
  assert metrics.frechet_distance_from_stats(mu, cov, mu, cov) == pytest.approx(0, abs=1e-9)
  x = rng.normal(size=(100, 5))
  assert metrics.frechet_distance(x, x) == pytest.approx(0, abs=1e-9)


def test_frechet_shifted_and_scaled_gaussians_closed_form():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(6, 6))
  cov = a @ a.T + 0.1 * np.eye(6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  # Same covariance: FD = |mu1 - mu2|^2.
  assert metrics.frechet_distance_from_stats(mu1, cov, mu2, cov) == pytest.approx(
    np.sum((mu1 - mu2) ** 2), rel=1e-9
  )
  # Commuting (diagonal) covariances: FD = |dmu|^2 + sum (s1 - s2)^2 of the std devs.
  s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  got = metrics.frechet_distance_from_stats(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
  assert got == pytest.approx(want, rel=1e-9)
  # From samples: shifted copies of one set give exactly |shift|^2.
  x = rng.normal(size=(500, 6))
  assert metrics.frechet_distance(x, x + mu1) == pytest.approx(np.sum(mu1**2), rel=1e-6)


def test_diversity_memorisation_fidelity():
  x = np.array([[0.0, 0.0], [3.0, 4.0]])
  assert metrics.mean_pairwise_distance(x) == pytest.approx(5.0)
  np.testing.assert_allclose(
    metrics.nearest_neighbour_distance(x, np.array([[0.0, 1.0]])), [1.0, np.sqrt(18.0)]
  )
  protos = np.array([[0.0, 0.0], [10.0, 0.0]])
  assert metrics.nearest_prototype_accuracy(
    np.array([[1.0, 0], [9.0, 0], [4.0, 0]]), [0, 1, 1], protos
  ) == pytest.approx(2 / 3)


def test_bootstrap_ci_and_paired_test():
  rng = np.random.default_rng(5)
  v = rng.normal(1.0, 1.0, 400)
  lo, hi = metrics.bootstrap_ci(v)
  assert lo < v.mean() < hi and lo > 0.8 and hi < 1.2
  lo2, hi2 = metrics.bootstrap_ci(v, statistic=np.median)
  assert lo2 < np.median(v) < hi2
  a = rng.normal(size=20)
  assert metrics.paired_test(a + 1.0, a)["p"] < 1e-3
  r = metrics.paired_test(a + rng.normal(0, 0.01, 20), a)
  assert r["p"] > 0.01 and r["n"] == 20


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: metrics.kid(np.zeros((1, 3)), np.zeros((4, 3))), "at least 2"),
    (lambda: metrics.kid(np.zeros((4, 3)), np.zeros((4, 2))), "features"),
    (lambda: metrics.kid(np.full((4, 3), np.nan), np.zeros((4, 3))), "non-finite"),
    (lambda: metrics.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2))), "shapes"),
    (lambda: metrics.bootstrap_ci([1.0], level=2), "level"),
  ],
)
def test_metric_errors_name_the_bad_value(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_hierarchical_bootstrap_covers_seed_variability():
  rng = np.random.default_rng(0)
  classes = rng.normal(size=20)
  one_seed = metrics.hierarchical_bootstrap_ci(classes[None], 2000)
  lo, hi = metrics.bootstrap_ci(classes, 2000)
  assert abs(one_seed[0] - lo) < 0.1 and abs(one_seed[1] - hi) < 0.1  # S = 1: over classes
  seeds = classes[None] + np.array([[-1.0], [0.0], [1.0]])  # seeds shift every class
  wide = metrics.hierarchical_bootstrap_ci(seeds, 2000)
  narrow = metrics.bootstrap_ci(seeds.mean(0), 2000)
  assert wide[0] < narrow[0] - 0.2 and wide[1] > narrow[1] + 0.2
  assert wide[0] < seeds.mean() < wide[1]


def test_stroke_components_counts_8_connected_pieces():
  img = -np.ones((5, 12, 12), np.float32)
  img[1, 2, 2:9] = 1  # one horizontal stroke
  img[2, 2, 2:9:2] = 1  # the same stroke broken into 4 dots
  img[3, 2:7, 2] = 1  # an L: two strokes that touch
  img[3, 6, 2:7] = 1
  img[4, np.arange(8), np.arange(8)] = 1  # a diagonal: 8-connected, one piece
  img[4, 0, 11] = 1  # and a dot in the corner
  np.testing.assert_array_equal(metrics.stroke_components(img), [0, 1, 4, 1, 2])
  np.testing.assert_array_equal(metrics.stroke_components(img[..., None]), [0, 1, 4, 1, 2])
  # A long winding stroke, over which labels take many steps to spread, is still one piece.
  s = -np.ones((1, 11, 11))
  s[0, 0, :] = s[0, :, 10] = s[0, 10, :] = s[0, 2:, 0] = s[0, 2, 0:9] = s[0, 2:9, 8] = 1
  s[0, 8, 2:9] = s[0, 4:9, 2] = s[0, 4, 2:7] = 1
  assert metrics.stroke_components(s)[0] == 1
  with pytest.raises(ValueError, match="N, H, W"):
    metrics.stroke_components(np.zeros((12, 12)))
