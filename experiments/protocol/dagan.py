"""Stage 7, the augmentation protocol: do generated images add to the augmentation people use?

Antoniou et al. (2017), as re-run independently by ``amurthy1/dagan_torch`` at K = 4
(57.8% without, 65.3% with DAGAN; research log 29), made fair to the shifts every
practitioner applies to their K images (research log 35). Here:

- ``dagan.num_classes`` classes of a split (validation alphabets to choose, the evaluation
  alphabets for the result); ``dagan.subsets`` draws of K of each class's 20 images train a
  C-way classifier from scratch, the other 20 - K test it;
- five arms (:func:`fair_arms`), each a batch schedule (:class:`Arm`) of ``dagan.steps``
  Adam steps of the same classifier from the same initialisation and batch draws:
  ``real``; ``real_gen`` (one batch in two from a pool of ``dagan.pool`` generated images
  per class: DAGAN's re-run arm); ``aug`` (every real batch through the standard
  augmentation, :func:`metagan_jax.augment.random_affine`); ``aug_gen`` (a share
  ``dagan.share`` of the batches generated, weighted ``dagan.weight`` in the loss, and
  augmented the same way); ``aug_copies`` (the control: ``aug_gen``'s schedule with the
  pool replaced by augmented copies of the supports);
- every arm's test accuracy at ``dagan.curve_points`` evenly spaced steps (its curve: is it
  converged?);
- the arms are compared over the subsets by a two-sample t-test, as the anchor does (the
  paired test over the same subsets is reported beside it).

All classifiers of one call (arms x subsets) train in one compiled, vmapped program.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats as sps

from experiments import train_lib
from experiments.protocol import classes, scoring
from metagan_jax import augment, layers

POOLS = ("generated", "support")
CLASSIFIERS = ("cnn", "conv4")
ANCHOR = {"k": 4, "real": 57.8, "dagan": 65.3, "gain": 7.5, "confidence": 97.8}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One classifier's batch schedule.

  Attributes:
    name: how tables and results name it.
    share: the fraction of the steps whose batch comes from the pool, evenly spaced
      (:func:`pool_steps`; 0.5: every odd step).
    weight: the loss weight of a pool batch (a real batch weighs 1).
    augment_real: real batches pass through the standard augmentation.
    augment_pool: pool batches pass through the same augmentation.
    pool: ``"generated"`` (the run's samples) or ``"support"`` (the K real images of each
      class: with ``augment_pool``, augmented copies of the supports).
  """

  name: str
  share: float = 0.0
  weight: float = 1.0
  augment_real: bool = False
  augment_pool: bool = False
  pool: str = "generated"

  def __post_init__(self):
    if not 0.0 <= self.share <= 1.0:
      raise ValueError(f"arm {self.name!r}: share={self.share} is not in [0, 1].")
    if self.weight < 0:
      raise ValueError(f"arm {self.name!r}: weight={self.weight} is negative.")
    if self.pool not in POOLS:
      raise ValueError(f"arm {self.name!r}: pool={self.pool!r} is not one of {POOLS}.")

  @property
  def uses_generated(self) -> bool:
    """Whether the arm draws any batch from the generated pool."""
    return self.share > 0 and self.pool == "generated"


def fair_arms(share: float = 0.5, weight: float = 1.0) -> tuple[Arm, ...]:
  """The five arms; ``share`` and ``weight`` set ``aug_gen`` and its control ``aug_copies``."""
  return (
    Arm("real"),
    Arm("real_gen", share=0.5),
    Arm("aug", augment_real=True),
    Arm("aug_gen", share, weight, augment_real=True, augment_pool=True),
    Arm("aug_copies", share, weight, augment_real=True, augment_pool=True, pool="support"),
  )


def arms_of(config) -> tuple[Arm, ...]:
  """The config's arms: :func:`fair_arms` at ``dagan.share`` and ``dagan.weight``."""
  return fair_arms(float(config.dagan.share), float(config.dagan.weight))


def pool_steps(share, steps):
  """Which steps take a pool batch: step i iff floor((i+1) share) > floor(i share).

  Evenly spaced, ``floor(steps * share)`` of ``steps`` steps; at 0.5 the odd steps.
  ``steps``: a count (returns a mask over ``range(steps)``) or step indices, traced ones
  included (the trainer asks it step by step, through :func:`batch_plan`).
  """
  i = jnp.arange(steps) if isinstance(steps, int) else jnp.asarray(steps)
  return jnp.floor((i + 1) * share) > jnp.floor(i * share)


def arm_row(arm: Arm) -> list[float]:
  """An arm as the trainer's numbers: share, weight, augment real, augment pool, copies."""
  return [
    arm.share,
    arm.weight,
    float(arm.augment_real),
    float(arm.augment_pool),
    float(arm.pool == "support"),
  ]


def batch_plan(row, i) -> dict:
  """What step ``i`` of an arm (``row``: :func:`arm_row`) trains on.

  Returns ``pool`` (a pool batch, not a real one), ``copies`` (that pool is the
  augmented copies of the supports, not the generated images), ``augment`` (the batch
  goes through the standard augmentation) and ``weight`` (its loss weight).
  """
  share, weight, aug_real, aug_pool, copies = (row[j] for j in range(5))
  pool = pool_steps(share, i)
  return {
    "pool": pool,
    "copies": pool & (jnp.asarray(copies) > 0.5),
    "augment": jnp.where(pool, aug_pool, aug_real) > 0.5,
    "weight": jnp.where(pool, weight, 1.0),
  }


def copies_pool(train_SxCxK, n: int, key: jax.Array, aug: tuple[float, float, float]):
  """The control's pool: ``n`` augmented copies of each class's K supports, ``[S, C, n, ...]``.

  Copy j of a class is support ``j mod K`` through the standard augmentation
  (``aug`` = shift, rotate, scale), drawn once per subset with ``fold_in(key, s)``, as a
  generated pool is made once per subset; the trainer then augments its batches again,
  as it does the generated pool's.
  """
  S, C, K = train_SxCxK.shape[:3]
  x = np.asarray(train_SxCxK)[:, :, np.arange(n) % K]  # [S, C, n, ...]
  flat = x.reshape(S, C * n, *x.shape[3:])
  out = [
    np.asarray(augment.random_affine(jax.random.fold_in(key, s), jnp.asarray(flat[s]), *aug))
    for s in range(S)
  ]
  return np.stack(out).reshape(x.shape)


class Conv4(nn.Module):
  """The few-shot literature's Conv-4: 4 x (conv 3x3, group norm, ReLU, 2x2 pool), a linear head.

  Deeper than :func:`experiments.protocol.scoring.low_data_cnn` and normalised; group norm
  keeps a batch's images independent (no batch statistics mix real and generated images).
  """

  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, x):
    h = x
    for i in range(4):
      h = layers.Conv3x3(self.width, name=f"Conv_{i}")(h)
      h = nn.relu(nn.GroupNorm(num_groups=8, name=f"Norm_{i}")(h))
      h = nn.max_pool(h, (2, 2), (2, 2)) if min(h.shape[1:3]) >= 2 else h
    feats = h.reshape(h.shape[0], -1)
    return nn.Dense(self.num_classes)(feats), feats


def classifier(name: str, num_classes: int) -> nn.Module:
  """``"cnn"`` (the anchors' conv 32, conv 64, dense 128) or ``"conv4"`` (:class:`Conv4`)."""
  if name == "cnn":
    return scoring.low_data_cnn(num_classes)
  if name == "conv4":
    return Conv4(num_classes)
  raise ValueError(f"dagan.classifier={name!r}: use one of {CLASSIFIERS}.")


@functools.cache
def _trainer(
  num_classes: int,
  batch: int,
  lr: float,
  steps: int,
  points: int,
  net_name: str,
  aug: tuple[float, float, float],
):
  """``train(keys [A, S], real, gen, copies, test, arms [A, 5]) -> accuracy [A, S, points]``."""
  net, opt = classifier(net_name, num_classes), optax.adam(lr)
  if steps % points:
    raise ValueError(f"dagan.steps={steps} is not a multiple of dagan.curve_points={points}.")
  chunk = steps // points
  shift, rotate, scale = aug

  def one(key, x_real, y_real, x_gen, y_gen, x_cop, y_cop, x_test, y_test, row):
    k_init, k_steps = jax.random.split(key)
    p = net.init(k_init, x_real[:1])["params"]

    def step(i, ps):
      p, s = ps
      k_idx, k_aug = jax.random.split(jax.random.fold_in(k_steps, i))
      plan = batch_plan(row, i)
      # One draw indexes the real set and the pools: with a pool of the real images
      # themselves and no augmentation, a pool batch is the real batch it replaces.
      u = jax.random.uniform(k_idx, (batch,))
      idx_r = (u * x_real.shape[0]).astype(jnp.int32)
      idx_g = (u * x_gen.shape[0]).astype(jnp.int32)
      idx_c = (u * x_cop.shape[0]).astype(jnp.int32)
      x_pool = jnp.where(plan["copies"], x_cop[idx_c], x_gen[idx_g])
      y_pool = jnp.where(plan["copies"], y_cop[idx_c], y_gen[idx_g])
      xb = jnp.where(plan["pool"], x_pool, x_real[idx_r])
      yb = jnp.where(plan["pool"], y_pool, y_real[idx_r])
      xb = jnp.where(plan["augment"], augment.random_affine(k_aug, xb, shift, rotate, scale), xb)

      def loss(p):
        logits = net.apply({"params": p}, xb)[0]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return plan["weight"] * ce

      u_, s = opt.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u_), s

    def segment(ps, c):
      ps = jax.lax.fori_loop(c * chunk, (c + 1) * chunk, step, ps)
      # in slices: every classifier of the vmap holds one slice's activations at a time
      pred = jax.lax.map(
        lambda x: net.apply({"params": ps[0]}, x[None])[0][0].argmax(-1), x_test, batch_size=200
      )
      return ps, (pred == y_test).mean()

    _, curve = jax.lax.scan(segment, (p, opt.init(p)), jnp.arange(points))
    return curve

  # subsets (axis 0 of the data, axis 1 of the keys), then arms (arm rows, keys' axis 0)
  over_s = jax.vmap(one, in_axes=(0,) * 9 + (None,))
  over_a = jax.vmap(over_s, in_axes=(0,) + (None,) * 8 + (0,))
  return jax.jit(over_a)


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


def _flat(x_SxCxN):
  """``[S, C, N, ...]`` -> images ``[S, C * N, ...]`` and labels ``[S, C * N]``."""
  S, C, N = x_SxCxN.shape[:3]
  y = np.broadcast_to(np.repeat(np.arange(C), N), (S, C * N))
  return jnp.asarray(x_SxCxN.reshape(S, C * N, *x_SxCxN.shape[3:])), jnp.asarray(y)


def train_arms(config, train_SxCxK, test_SxCxH, pool_SxCxP=None, arms=None, seed: int = 0) -> dict:
  """Test accuracy of a classifier per arm and subset, along its training.

  Args:
    config: ``dagan.*`` gives the classifier, its steps, batch and learning rate, the
      augmentation (``aug_shift``, ``aug_rotate``, ``aug_scale``) and ``curve_points``.
    train_SxCxK: the K real images per class of every subset.
    test_SxCxH: the other images of every class, per subset.
    pool_SxCxP: generated images per class and subset, for the arms that use them.
    arms: :class:`Arm` s (default :func:`arms_of` the config).
    seed: subset ``s`` starts every arm from the same initialisation and batch draws,
      ``fold_in(key(seed), s)``, so on one subset the arms differ only by their schedule.
      The control's pool (arms whose ``pool`` is ``"support"``) is
      :func:`copies_pool` of as many copies as the generated pool holds (``dagan.pool``
      without one), from ``key(seed + 1_000_003)``.

  Returns:
    ``{"acc": {arm: [S]}, "curve": {arm: [S, points]}, "curve_steps": [points]}``: the
    accuracy after ``dagan.steps`` steps, and at every ``steps / points`` steps.
  """
  dc = config.dagan
  arms = tuple(arms_of(config) if arms is None else arms)
  S, C = train_SxCxK.shape[:2]
  for a in arms:
    if not isinstance(a, Arm):
      raise ValueError(f"arm {a!r} is not an Arm: build arms with dagan.Arm or fair_arms().")
  names = [a.name for a in arms]
  if len(set(names)) != len(names):
    raise ValueError(f"arms {names}: every arm needs its own name.")
  for a in arms:
    if a.uses_generated and pool_SxCxP is None:
      raise ValueError(
        f"arm {a.name!r} trains on generated images: give pool_SxCxP [S, C, P, ...]."
      )
  if pool_SxCxP is not None and pool_SxCxP.shape[:2] != (S, C):
    raise ValueError(
      f"pool_SxCxP has shape {pool_SxCxP.shape}: it needs [S, C] = {[S, C]} leading axes."
    )
  x_real, y_real = _flat(train_SxCxK)
  x_test, y_test = _flat(test_SxCxH)
  # without a pool the real set stands in (no arm's schedule draws from it then)
  x_gen, y_gen = (x_real, y_real) if pool_SxCxP is None else _flat(pool_SxCxP)
  steps, points = int(dc.steps), int(dc.get("curve_points", 1))
  aug = (float(dc.aug_shift), float(dc.get("aug_rotate", 0.0)), float(dc.get("aug_scale", 0.0)))
  if any(a.pool == "support" and a.share > 0 for a in arms):
    n_copies = int(dc.pool) if pool_SxCxP is None else pool_SxCxP.shape[2]
    copies = copies_pool(train_SxCxK, n_copies, jax.random.key(int(seed) + 1_000_003), aug)
    x_cop, y_cop = _flat(copies)
  else:
    x_cop, y_cop = x_real, y_real
  rows = jnp.asarray([arm_row(a) for a in arms], jnp.float32)
  base = jax.random.key(int(seed))
  keys = jnp.stack([jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(S))] * len(arms))
  train = _trainer(
    C, int(dc.batch), float(dc.lr), steps, points, str(dc.get("classifier", "cnn")), aug
  )
  curve = np.asarray(train(keys, x_real, y_real, x_gen, y_gen, x_cop, y_cop, x_test, y_test, rows))
  return {
    "acc": {n: curve[i, :, -1] for i, n in enumerate(names)},
    "curve": {n: curve[i] for i, n in enumerate(names)},
    "curve_steps": [(j + 1) * steps // points for j in range(points)],
  }


def converged(curve: dict, curve_steps, tol: float = 0.005) -> dict:
  """Per arm, the accuracy change of the last doubling of the steps (``steps / 2`` to ``steps``).

  ``curve``: ``{arm: [S, points]}`` of :func:`train_arms`; the curve's points must include
  ``steps / 2``. Returns ``{arm: {"half", "full", "change", "converged"}}`` (means over the
  subsets; ``converged``: ``|change| <= tol``, 0.5 points by default).
  """
  steps = curve_steps[-1]
  if steps % 2 or steps // 2 not in curve_steps:
    raise ValueError(f"curve steps {list(curve_steps)} have no point at steps / 2 = {steps / 2}.")
  h = list(curve_steps).index(steps // 2)
  out = {}
  for a, c in curve.items():
    c = np.asarray(c, np.float64)
    half, full = float(c[:, h].mean()), float(c[:, -1].mean())
    out[a] = {
      "half": half,
      "full": full,
      "change": full - half,
      "converged": abs(full - half) <= tol,
    }
  return out


def ttest(a, b) -> dict:
  """Two-sample Student t-test of ``a`` against ``b`` (the anchor's), and the paired one.

  Returns ``gain`` (mean of a minus mean of b), ``t``, ``p`` (two-sided, two-sample),
  ``confidence`` (1 - p/2: the one-sided confidence that a > b, as the anchor reports) and
  ``p_paired`` (two-sided paired t-test over the subsets, when a and b pair up).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  gain = float(a.mean() - b.mean())
  # No spread at all (identical arms): no evidence of a difference if the means agree, and
  # certainty if they do not; scipy says NaN, which JSON cannot hold.
  settle = lambda p: float(p) if np.isfinite(p) else (1.0 if gain == 0 else 0.0)
  res = sps.ttest_ind(a, b)
  p = settle(res.pvalue)
  out = {
    "gain": gain,
    "t": float(res.statistic),
    "p": p,
    "confidence": 1.0 - p / 2 if gain > 0 else p / 2,
  }
  if a.shape == b.shape and len(a) > 1:
    out["p_paired"] = 1.0 if np.all(a == b) else settle(sps.ttest_rel(a, b).pvalue)
  return out


#: The protocol's comparisons, ``(a, b)``: does ``a`` beat ``b``?
PAIRS = (
  ("real_gen", "real"),
  ("aug", "real"),
  ("aug_gen", "aug"),
  ("aug_copies", "aug"),
  ("aug_gen", "aug_copies"),
)


def compare(acc: dict) -> dict:
  """The protocol's tests (:data:`PAIRS`), keyed ``"a vs b"``: generated batches against
  real ones, and on top of the augmentation against it and against its control."""
  return {f"{a} vs {b}": ttest(acc[a], acc[b]) for a, b in PAIRS if a in acc and b in acc}


def contrast(row_a: dict, row_b: dict, arms=("real_gen", "aug_gen")) -> dict:
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


def prototype_filter(embed_fn, support_CxK, cand_CxM) -> dict:
  """Selection: keep a generated image whose nearest class prototype is its own class's.

  A class's prototype is the mean embedding of its K support images (Snell et al.,
  2017); similarity is cosine. ``embed_fn`` must come from a network trained without
  the scored classes, and not the one that scores fidelity (or fidelity would measure
  the filter).

  Args:
    embed_fn: images ``[n, ...]`` -> embeddings ``[n, D]``.
    support_CxK: the K support images of each of C classes.
    cand_CxM: M generated candidates per class.

  Returns:
    ``{"accept": bool [C, M], "margin": [C, M], "rate": float}``: ``margin`` is the
    similarity to the own prototype minus the largest to another class's; accepted
    iff it is positive. ``rate`` is the accepted share.
  """
  C, K = support_CxK.shape[:2]
  M = cand_CxM.shape[1]
  if cand_CxM.shape[0] != C:
    raise ValueError(f"cand_CxM has {cand_CxM.shape[0]} classes, the supports {C}.")
  if C < 2:
    raise ValueError("prototype_filter needs at least 2 classes (a prototype to lose to).")
  unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  e_sup = np.asarray(embed_fn(support_CxK.reshape(C * K, *support_CxK.shape[2:])), np.float64)
  protos = unit(unit(e_sup).reshape(C, K, -1).mean(1))  # [C, D]
  e_c = unit(np.asarray(embed_fn(cand_CxM.reshape(C * M, *cand_CxM.shape[2:])), np.float64))
  sim = (e_c @ protos.T).reshape(C, M, C)
  own = sim[np.arange(C), :, np.arange(C)]  # [C, M]
  other = np.where(np.eye(C, dtype=bool)[:, None, :], -np.inf, sim).max(-1)
  margin = own - other
  accept = margin > 0
  return {"accept": accept, "margin": margin, "rate": float(accept.mean())}


def select_pool(cand_CxM, accept_CxM, margin_CxM, n: int, return_unique: bool = False):
  """``n`` images per class from the candidates: the accepted ones, best margin first.

  More than ``n`` accepted: the ``n`` of largest margin. Fewer: the accepted ones
  repeated in turn (a pool of fixed size, so every class keeps its share of the
  batches). None: the ``n`` candidates of largest margin (the filter's best guess).
  With ``return_unique``, also how many distinct images each class's pool holds (they
  come first).
  """
  out, unique = [], []
  for cand, acc, mar in zip(cand_CxM, accept_CxM, margin_CxM):
    order = np.argsort(-mar, kind="stable")
    ok = order[acc[order]]
    pick = order[:n] if len(ok) == 0 else ok[np.arange(n) % len(ok)]
    out.append(cand[pick])
    unique.append(n if len(ok) == 0 else min(n, len(ok)))
  return (np.stack(out), np.asarray(unique)) if return_unique else np.stack(out)


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
