"""Stage 7, the DAGAN augmentation protocol: do generated images help a classifier learn?

Antoniou et al. (2017), as re-run independently by ``amurthy1/dagan_torch`` at K = 4
(57.8% without, 65.3% with DAGAN; research log 29). Here:

- ``dagan.num_classes`` classes of a split (validation alphabets to choose a recipe, the
  evaluation alphabets for the result); ``dagan.subsets`` draws of K of each class's 20
  images train a C-way CNN from scratch, the other 20 - K test it;
- four arms, each a batch schedule of ``dagan.steps`` Adam steps (same CNN, same steps):
  ``real`` (every batch from the K real images per class), ``gen`` (every other batch from a
  pool of ``dagan.pool`` generated images per class, made once per subset), ``jitter`` (every
  other batch the real images randomly shifted) and ``gen_jitter`` (``gen`` with its real
  batches shifted);
- the arms are compared over the subsets by a two-sample t-test, as the anchor does (the
  paired test over the same subsets is reported beside it).

All classifiers of one call (arms x subsets) train in one compiled, vmapped program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats as sps

from experiments import train_lib
from experiments.protocol import classes, scoring
from metagan_jax import augment

ARMS = ("real", "gen", "jitter", "gen_jitter")
# per arm: (odd steps from the generated pool, odd real steps shifted, even steps shifted)
_SCHEDULE = {
  "real": (False, False, False),
  "gen": (True, False, False),
  "jitter": (False, True, False),
  "gen_jitter": (True, False, True),
}
ANCHOR = {"k": 4, "real": 57.8, "dagan": 65.3, "gain": 7.5, "confidence": 97.8}


def dagan_classes(config, split: str = "val") -> dict:
  """``dagan.num_classes`` classes of ``split``, spread evenly over its alphabets.

  Returns ``names`` and ``images [C, N, 28, 28, 1]`` (every class keeps as many images as
  the smallest picked class has). The pick depends on ``dagan.split_seed`` alone.
  """
  if split not in ("val", "test"):
    raise ValueError(f"split={split!r}: the DAGAN protocol runs on 'val' or 'test' classes.")
  data = train_lib.load_split(config, split, verbose=False)
  n = int(config.dagan.num_classes)
  if n > len(data):
    raise ValueError(
      f"dagan.num_classes={n}, but the {split!r} split has {len(data)} classes: lower it."
    )
  pick = classes.spread_over_alphabets(
    data.groups, n, np.random.default_rng([config.dagan.split_seed, 43])
  )
  m = min(len(data.images[i]) for i in pick)
  return {
    "names": [data.names[i] for i in pick],
    "images": np.stack([np.asarray(data.images[i][:m], np.float32) for i in pick]),
  }


def subsets(images_CxN, k: int, n_subsets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits every class's images into K train and N - K test images, once per subset.

  Returns ``train [S, C, K, ...]`` and ``test [S, C, N - K, ...]``; subset ``s`` uses
  ``default_rng([seed, s])``.
  """
  C, N = images_CxN.shape[:2]
  if not 0 < k < N:
    raise ValueError(f"dagan.k={k}: use 1 <= K < {N} (the images per class).")
  tr, te = [], []
  for s in range(n_subsets):
    rng = np.random.default_rng([seed, s])
    perm = np.stack([rng.permutation(N) for _ in range(C)])  # [C, N]
    x = np.take_along_axis(images_CxN, perm[:, :, None, None, None], axis=1)
    tr.append(x[:, :k])
    te.append(x[:, k:])
  return np.stack(tr), np.stack(te)


@functools.cache
def _trainer(num_classes: int, batch: int, lr: float, shift: float, steps: int):
  """``train(keys [A, S], real, pools, test, flags [A, 3]) -> accuracy [A, S]``, one program."""
  net, opt = scoring.low_data_cnn(num_classes), optax.adam(lr)

  def one(key, x_real, y_real, x_pool, y_pool, x_test, y_test, flags):
    use_gen, shift_alt, shift_even = flags[0], flags[1], flags[2]
    k_init, k_steps = jax.random.split(key)
    p = net.init(k_init, x_real[:1])["params"]

    def step(i, ps):
      p, s = ps
      k_idx, k_shift = jax.random.split(jax.random.fold_in(k_steps, i))
      # The same draw indexes the real set and the pool: with a pool of the real images
      # themselves, ``gen`` is step for step the ``real`` arm.
      u = jax.random.uniform(k_idx, (batch,))
      idx_r = (u * x_real.shape[0]).astype(jnp.int32)
      idx_p = (u * x_pool.shape[0]).astype(jnp.int32)
      odd = i % 2 == 1
      from_pool = odd & use_gen
      xb = jnp.where(from_pool, x_pool[idx_p], x_real[idx_r])
      yb = jnp.where(from_pool, y_pool[idx_p], y_real[idx_r])
      shifted = jnp.where(odd, shift_alt & ~use_gen, shift_even)
      xb = jnp.where(shifted, augment.translate(k_shift, xb, ratio=shift), xb)

      def loss(p):
        logits = net.apply({"params": p}, xb)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

      u_, s = opt.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u_), s

    p, _ = jax.lax.fori_loop(0, steps, step, (p, opt.init(p)))
    pred = net.apply({"params": p}, x_test)[0].argmax(-1)
    return (pred == y_test).mean()

  # subsets (axis 0 of the data, axis 1 of the keys), then arms (flags, keys' axis 0)
  over_s = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, 0, None))
  over_a = jax.vmap(over_s, in_axes=(0, None, None, None, None, None, None, 0))
  return jax.jit(over_a)


def _flat(x_SxCxN):
  """``[S, C, N, ...]`` -> images ``[S, C * N, ...]`` and labels ``[S, C * N]``."""
  S, C, N = x_SxCxN.shape[:3]
  y = np.broadcast_to(np.repeat(np.arange(C), N), (S, C * N))
  return jnp.asarray(x_SxCxN.reshape(S, C * N, *x_SxCxN.shape[3:])), jnp.asarray(y)


def train_arms(config, train_SxCxK, test_SxCxH, pool_SxCxP=None, arms=ARMS, seed: int = 0) -> dict:
  """Accuracy on the test images of a CNN per arm and subset: ``{arm: [S]}``.

  Args:
    train_SxCxK: the K real images per class of every subset.
    test_SxCxH: the other images of every class, per subset.
    pool_SxCxP: generated images per class and subset, for the arms that use them
      (``gen``, ``gen_jitter``).
    arms: which of :data:`ARMS` to train.
    seed: subset ``s`` starts every arm from the same initialisation and batch draws,
      ``fold_in(key(seed), s)``, so on one subset the arms differ only by their schedule.
  """
  dc = config.dagan
  S, C = train_SxCxK.shape[:2]
  for a in arms:
    if a not in ARMS:
      raise ValueError(f"arm {a!r} is not one of {ARMS}.")
    if _SCHEDULE[a][0] and pool_SxCxP is None:
      raise ValueError(f"arm {a!r} trains on generated images: give pool_SxCxP [S, C, P, ...].")
  if pool_SxCxP is not None and pool_SxCxP.shape[:2] != (S, C):
    raise ValueError(
      f"pool_SxCxP has shape {pool_SxCxP.shape}: it needs [S, C] = {[S, C]} leading axes."
    )
  x_real, y_real = _flat(train_SxCxK)
  x_test, y_test = _flat(test_SxCxH)
  # without a pool the real set stands in (no arm's schedule draws from it then)
  x_pool, y_pool = (x_real, y_real) if pool_SxCxP is None else _flat(pool_SxCxP)
  flags = jnp.asarray([_SCHEDULE[a] for a in arms])
  base = jax.random.key(int(seed))
  keys = jnp.stack([jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(S))] * len(arms))
  train = _trainer(C, int(dc.batch), float(dc.lr), float(dc.shift), int(dc.steps))
  acc = np.asarray(train(keys, x_real, y_real, x_pool, y_pool, x_test, y_test, flags))
  return {a: acc[i] for i, a in enumerate(arms)}


def ttest(a, b) -> dict:
  """Two-sample Student t-test of ``a`` against ``b`` (the anchor's), and the paired one.

  Returns ``gain`` (mean of a minus mean of b), ``t``, ``p`` (two-sided, two-sample),
  ``confidence`` (1 - p/2: the one-sided confidence that a > b, as the anchor reports) and
  ``p_paired`` (two-sided paired t-test over the subsets, when a and b pair up).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  res = sps.ttest_ind(a, b)
  out = {
    "gain": float(a.mean() - b.mean()),
    "t": float(res.statistic),
    "p": float(res.pvalue),
    "confidence": float(1.0 - res.pvalue / 2) if a.mean() > b.mean() else float(res.pvalue / 2),
  }
  if a.shape == b.shape and len(a) > 1:
    out["p_paired"] = float(sps.ttest_rel(a, b).pvalue)
  return out


def compare(acc: dict) -> dict:
  """The protocol's tests: each augmentation arm against ``real``, and ``gen_jitter`` against
  ``jitter`` and ``gen`` against ``jitter`` (do generated batches add to the trivial one?)."""
  pairs = [("gen", "real"), ("jitter", "real"), ("gen_jitter", "real")]
  pairs += [("gen_jitter", "jitter"), ("gen", "jitter")]
  return {f"{a}-{b}": ttest(acc[a], acc[b]) for a, b in pairs if a in acc and b in acc}


def contrast(row_a: dict, row_b: dict, arms=("gen", "gen_jitter")) -> dict:
  """Two rows of the protocol against each other, arm by arm (:func:`ttest`, ``a`` minus ``b``).

  ``row_a`` / ``row_b``: rows of ``experiments/dagan.py``'s ``dagan.json`` (their ``acc``).
  Rows of one call, or of calls with the same classes, subsets and ``seed``, share every
  classifier's initialisation and batch keys, so ``p_paired`` pairs them subset by subset.
  """
  for r in (row_a, row_b):
    missing = [a for a in arms if a not in r["acc"]]
    if missing:
      raise ValueError(f"row {r.get('name')!r} has no arm {missing}; it has {sorted(r['acc'])}.")
  return {a: ttest(row_a["acc"][a], row_b["acc"][a]) for a in arms}


def generated_pools(
  config, meta_params, train_SxCxK, t: int, key: jax.Array, rule: dict | None = None
) -> np.ndarray:
  """``dagan.pool`` images per class from each subset's K images: ``[S, C, P, ...]``.

  At ``t = 0`` a conditional generator draws from the support in one forward pass; at
  ``t > 0`` the GAN first adapts ``t`` steps to each class (``scoring.adapt_and_generate``,
  the main protocol's sampling). Subset ``s`` uses ``fold_in(key, s)``.
  """
  model = train_lib.get_model(config)
  if t == 0 and not model.conditional:
    raise ValueError(
      "an unconditional GAN draws no class at T = 0: sample it at T > 0 (dagan.steps_t)."
    )
  n = int(config.dagan.pool)
  psi = float((rule or {}).get("psi", 1.0))
  chunk = int(config.dagan.get("max_classes", 0))
  return np.stack(
    [
      scoring.adapt_and_generate_psis(
        config, meta_params, sup, [t], jax.random.fold_in(key, s), n, rule, [psi], chunk
      )[t][psi]
      for s, sup in enumerate(train_SxCxK)
    ]
  )
