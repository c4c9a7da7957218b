"""Sample-quality metrics in a feature space, and the statistics to report them.

Everything here is plain numpy on feature arrays ``[n, d]`` (no TensorFlow, no
scipy): compute features with any network, then

* :func:`kid`: kernel inception distance, the unbiased MMD^2 estimate with the
  cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (can be negative; its
  expectation is 0 when both sets come from one distribution).
* :func:`frechet_distance`: ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``
  of Gaussians fitted to the two sets (FID's formula, biased for small n).
* :func:`mean_pairwise_distance`, :func:`nearest_neighbour_distance`,
  :func:`nearest_prototype_accuracy`: diversity, memorisation, class fidelity.
* :func:`equal_error_rate`, :func:`verification_scores`: speaker verification, as
  Meta-TTS scores voice similarity (cosine similarity of speaker embeddings).
* :func:`bootstrap_ci`, :func:`hierarchical_bootstrap_ci`, :func:`paired_test`: 95%
  bootstrap intervals (over classes, or over seeds and classes) and a
  paired sign-flip permutation test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
  "polynomial_kernel",
  "kid",
  "gaussian_stats",
  "frechet_distance_from_stats",
  "frechet_distance",
  "pairwise_distances",
  "mean_pairwise_distance",
  "nearest_neighbour_distance",
  "nearest_prototype_accuracy",
  "stroke_components",
  "cosine_similarity",
  "verification_scores",
  "equal_error_rate",
  "bootstrap_ci",
  "paired_test",
  "hierarchical_bootstrap_ci",
]


def _as_features(x, what: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"{what} must be a [n, d] feature array with n >= 1, got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{what} has non-finite values ({int(np.sum(~np.isfinite(x)))} entries).")
  return x


def polynomial_kernel(
  x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
  """``(gamma * x.y + coef0) ** degree``; ``gamma`` defaults to ``1 / d``."""
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  return (gamma * x @ y.T + coef0) ** degree


def kid(x, y, kernel: Callable[[np.ndarray, np.ndarray], np.ndarray] = polynomial_kernel) -> float:
  """Unbiased MMD^2 between feature sets ``x [m, d]`` and ``y [n, d]`` (KID).

  ``mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``.
  Unbiased: its expectation is the population MMD^2, so it is 0 on average for
  two samples of one distribution and can be negative.

  Raises:
    ValueError: if a set has fewer than 2 rows, the dimensions differ, or a
      value is non-finite.
  """
  x, y = _as_features(x, "kid: x"), _as_features(y, "kid: y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"kid: x has {x.shape[1]} features, y has {y.shape[1]}.")
  m, n = x.shape[0], y.shape[0]
  if m < 2 or n < 2:
    raise ValueError(f"kid needs at least 2 samples per set, got {m} and {n}.")
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
  syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
  return float(sxx + syy - 2.0 * kxy.mean())


def gaussian_stats(x) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[d]`` and unbiased covariance ``[d, d]`` of features ``x [n, d]`` (n >= 2)."""
  x = _as_features(x, "gaussian_stats: x")
  if x.shape[0] < 2:
    raise ValueError(f"gaussian_stats needs at least 2 samples, got {x.shape[0]}.")
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, s1, mu2, s2) -> float:
  """Frechet distance between ``N(mu1, s1)`` and ``N(mu2, s2)``.

  ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1^(1/2) s2 s1^(1/2))^(1/2))``;
  the trace term is computed from symmetric eigendecompositions, so it is real
  and stable for singular covariances.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
    raise ValueError(
      f"frechet_distance: shapes do not match: mu {mu1.shape}, {mu2.shape}; "
      f"cov {s1.shape}, {s2.shape}."
    )
  r1 = _sqrt_psd(s1)
  w = np.linalg.eigvalsh((r1 @ s2 @ r1 + (r1 @ s2 @ r1).T) / 2)
  cross = np.sum(np.sqrt(np.clip(w, 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def frechet_distance(x, y) -> float:
  """Frechet distance between Gaussians fitted to feature sets ``x`` and ``y`` (FID's formula)."""
  return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def pairwise_distances(x, y) -> np.ndarray:
  """Euclidean distances ``[m, n]`` between rows of ``x [m, d]`` and ``y [n, d]``."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
  return np.sqrt(np.clip(d2, 0, None))


def mean_pairwise_distance(x) -> float:
  """Mean distance over distinct pairs of rows of ``x`` (diversity)."""
  x = _as_features(x, "mean_pairwise_distance: x")
  n = x.shape[0]
  if n < 2:
    raise ValueError(f"mean_pairwise_distance needs at least 2 samples, got {n}.")
  d = pairwise_distances(x, x)
  return float((d.sum() - np.trace(d)) / (n * (n - 1)))


def nearest_neighbour_distance(x, ref) -> np.ndarray:
  """For each row of ``x``, the distance to its nearest row of ``ref`` (``[m]``)."""
  return pairwise_distances(x, ref).min(axis=1)


def nearest_prototype_accuracy(x, labels, prototypes) -> float:
  """Fraction of rows of ``x`` whose nearest prototype (row of ``prototypes``) is ``labels``."""
  pred = pairwise_distances(x, prototypes).argmin(axis=1)
  return float(np.mean(pred == np.asarray(labels)))


def stroke_components(imgs_NxHxW, threshold: float = 0.0) -> np.ndarray:
  """Connected pieces of ink per image (8-connectivity): how broken the strokes are.

  A handwritten character is one to a few continuous strokes (Omniglot's real
  images: 1.2-1.6 pieces on average); a sample whose strokes break into dots has many.
  Pixels above ``threshold`` are ink (the models draw light strokes on dark).

  Args:
    imgs_NxHxW: images ``[N, H, W]`` or ``[N, H, W, 1]``.
    threshold: the ink level.

  Returns:
    ``[N]`` int counts (0 for a blank image).
  """
  x = np.asarray(imgs_NxHxW)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3:
    raise ValueError(
      f"stroke_components takes [N, H, W] or [N, H, W, 1] images, got shape {np.shape(imgs_NxHxW)}."
    )
  ink = x > threshold
  n, h, w = ink.shape
  # Every ink pixel starts with its own label; labels spread as a 3x3 maximum
  # inside the ink until nothing changes, so each piece ends with one label.
  lab = np.where(ink, np.arange(1, h * w + 1).reshape(1, h, w), 0).astype(np.int32)
  while True:
    p = np.pad(lab, ((0, 0), (1, 1), (1, 1)))
    m = np.max([p[:, a : a + h, b : b + w] for a in range(3) for b in range(3)], axis=0)
    new = np.where(ink, m, 0)
    if np.array_equal(new, lab):
      break
    lab = new
  return np.array([len(np.unique(l[l > 0])) for l in lab], dtype=np.int64)


def cosine_similarity(x, y) -> np.ndarray:
  """``[n, m]`` cosine similarities between the rows of ``x [n, d]`` and ``y [m, d]``."""
  x, y = _as_features(x, "x").astype(np.float64), _as_features(y, "y").astype(np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
  return x @ y.T


def verification_scores(trials, enrolled, others) -> tuple[np.ndarray, np.ndarray]:
  """Target and non-target scores of speaker-verification trials.

  Each trial clip is compared with the claimed speaker's enrolment clips
  (target: mean cosine similarity of its embedding to ``enrolled``) and with
  other speakers' clips (non-target: its mean similarity to each other
  speaker's clips, one score per other speaker).

  Args:
    trials: embeddings ``[n, d]`` of the clips to verify (generated clips).
    enrolled: embeddings ``[m, d]`` of the claimed speaker's real clips.
    others: a list of embeddings ``[m_j, d]``, one per other speaker.

  Returns:
    ``(target [n], nontarget [n * len(others)])``.
  """
  if not len(others):
    raise ValueError("verification_scores needs at least one other speaker's embeddings.")
  target = cosine_similarity(trials, enrolled).mean(axis=1)
  nontarget = np.concatenate([cosine_similarity(trials, o).mean(axis=1) for o in others])
  return target, nontarget


def equal_error_rate(target, nontarget) -> tuple[float, float]:
  """The equal error rate of a verifier, and the threshold where it holds.

  A trial is accepted when its score is at least the threshold. The false
  rejection rate (targets below it) and the false acceptance rate
  (non-targets at or above it) are swept over every observed score; the EER is
  their mean where they are closest (exact when they cross at a score).

  Args:
    target: scores of trials whose claim is true (higher: more alike).
    nontarget: scores of trials whose claim is false.

  Returns:
    ``(eer, threshold)``, the EER a fraction in [0, 1].
  """
  t, n = np.asarray(target, np.float64).ravel(), np.asarray(nontarget, np.float64).ravel()
  if not len(t) or not len(n):
    raise ValueError(f"EER needs target and non-target scores; got {len(t)} and {len(n)}.")
  thresholds = np.unique(np.concatenate([t, n, [np.inf]]))
  frr = np.searchsorted(np.sort(t), thresholds, side="left") / len(t)  # targets < threshold
  far = 1.0 - np.searchsorted(np.sort(n), thresholds, side="left") / len(n)  # nontargets >=
  i = int(np.argmin(np.abs(frr - far)))
  return float((frr[i] + far[i]) / 2), float(thresholds[i])


def bootstrap_ci(
  values,
  n_boot: int = 2000,
  level: float = 0.95,
  seed: int = 0,
  statistic: Callable[[np.ndarray], float] | None = None,
) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean (or ``statistic``) of ``values`` over axis 0.

  ``statistic`` gets the resampled rows (for pooled metrics, e.g. FD over classes).
  """
  values = np.asarray(values)
  if values.shape[0] < 1:
    raise ValueError("bootstrap_ci needs at least one value.")
  if not 0 < level < 1:
    raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}.")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, values.shape[0], (n_boot, values.shape[0]))
  if statistic is None:
    stats = values[idx].mean(axis=1)
  else:
    stats = np.array([statistic(values[i]) for i in idx])
  a = (1 - level) / 2 * 100
  return float(np.percentile(stats, a)), float(np.percentile(stats, 100 - a))


def paired_test(a, b, n_perm: int = 20000, seed: int = 0) -> dict:
  """Paired comparison of ``a`` and ``b`` (same units, e.g. classes).

  Returns ``mean_diff`` (mean of ``a - b``), the paired ``t`` statistic, and a
  two-sided ``p`` value from a sign-flip permutation test (exact in the limit
  of ``n_perm``; no distributional assumption).
  """
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.ndim != 1 or d.size < 2:
    raise ValueError(
      f"paired_test needs two 1-D arrays of equal length >= 2, got diff shape {d.shape}."
    )
  sd = d.std(ddof=1)
  if sd > 0:
    t = float(d.mean() / (sd / np.sqrt(d.size)))
  else:
    t = 0.0 if d.mean() == 0 else float(np.sign(d.mean()) * np.inf)
  rng = np.random.default_rng(seed)
  signs = rng.choice([-1.0, 1.0], (n_perm, d.size))
  null = np.abs((signs * d).mean(axis=1))
  p = float((1 + np.sum(null >= abs(d.mean()) - 1e-15)) / (n_perm + 1))
  return {"mean_diff": float(d.mean()), "t": t, "p": p, "n": int(d.size)}


def hierarchical_bootstrap_ci(
  values_SxC, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of ``values [S, C]`` over seeds and classes.

  Each replicate resamples the ``S`` seeds (rows) and, independently, the ``C``
  classes (columns) with replacement, so the interval covers the variability
  of both (training seeds and test classes). With ``S = 1`` it is the ordinary
  bootstrap over classes.
  """
  v = np.asarray(values_SxC, np.float64)
  if v.ndim != 2 or v.size < 1:
    raise ValueError(f"hierarchical_bootstrap_ci needs a non-empty [S, C] array, got {v.shape}.")
  if not 0 < level < 1:
    raise ValueError(f"hierarchical_bootstrap_ci: level must be in (0, 1), got {level}.")
  rng = np.random.default_rng(seed)
  s, c = v.shape
  si = rng.integers(0, s, (n_boot, s))
  ci = rng.integers(0, c, (n_boot, c))
  stats = np.array([v[a][:, b].mean() for a, b in zip(si, ci)])
  a = (1 - level) / 2 * 100
  return float(np.percentile(stats, a)), float(np.percentile(stats, 100 - a))
