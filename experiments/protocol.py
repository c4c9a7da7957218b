"""The evaluation protocol: adapt every method to unseen Omniglot classes and score it.

See experiments/README.md for the protocol in words. In short: a feature CNN
trained on meta-training classes only; 20 fixed test classes from the
evaluation alphabets, K support images each (the rest is the held-out
reference); adapt for T in ``eval.steps``; score generated samples against the
held-out images in feature space (KID, FD, class fidelity, diversity,
memorisation, low-data classification), next to a copy baseline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metagan_jax as mg
from metagan_jax import metrics as M

from experiments import train_lib

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_CLASSES_FILE = os.path.join(HERE, "omniglot_test_classes.json")
METRICS = ("kid", "fidelity", "diversity", "memorisation", "lowdata_acc")


# --- the feature network ------------------------------------------------------


class FeatureNet(nn.Module):
  """Small CNN classifier; ``features`` are its penultimate layer."""

  num_classes: int
  dim: int = 64
  widths: tuple[int, ...] = (16, 32, 64)

  @nn.compact
  def __call__(self, x):
    h = x
    for width in self.widths:
      h = nn.relu(nn.Conv(width, (3, 3))(h))
      h = nn.avg_pool(h, (2, 2), (2, 2))
    feats = nn.relu(nn.Dense(self.dim)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(feats), feats


def _feature_net_key(config, split) -> str:
  fc = {k: v for k, v in config.features.to_dict().items() if k != "cache_dir"}
  h = hashlib.sha256(json.dumps([fc, config.dataset, split.names, float(config.get("blur", 0.0))],
                                sort_keys=True).encode())
  return h.hexdigest()[:12]


def feature_net(config, verbose: bool = True):
  """Trains (or loads from ``features.cache_dir``) the feature CNN.

  Trained on the meta-training classes only (no rotations), holding out
  ``features.holdout`` images per class to report its accuracy.

  Returns:
    ``(features_fn, info)``: ``features_fn(images [n, 28, 28, 1]) -> np [n, dim]``
    and ``{"heldout_acc", "train_acc", "num_classes", "steps", "cache"}``.
  """
  fc = config.features
  split = train_lib.load_split(config, "train", rotations=False, verbose=verbose)
  net = FeatureNet(len(split), fc.dim)
  key = _feature_net_key(config, split)
  path = os.path.join(fc.cache_dir, f"featnet_{key}")
  params0 = net.init(jax.random.key(fc.seed), jnp.zeros((1, *split.image_shape)))["params"]
  if os.path.exists(path + ".json") and os.path.exists(path + ".msgpack"):
    with open(path + ".msgpack", "rb") as f:
      params = flax.serialization.from_bytes(params0, f.read())
    with open(path + ".json") as f:
      info = json.load(f)
  else:
    t0 = time.perf_counter()
    n = min(len(x) for x in split.images)
    rng = np.random.default_rng(fc.seed)
    perms = [rng.permutation(len(x)) for x in split.images]
    tr = [x[p[fc.holdout:]] for x, p in zip(split.images, perms)]
    te = [x[p[:fc.holdout]] for x, p in zip(split.images, perms)]
    x_tr = jnp.asarray(np.concatenate(tr))
    y_tr = jnp.asarray(np.concatenate([np.full(len(x), i) for i, x in enumerate(tr)]))
    x_te = np.concatenate(te)
    y_te = np.concatenate([np.full(len(x), i) for i, x in enumerate(te)])
    opt = optax.adam(fc.lr)

    def loss_fn(p, xb, yb):
      logits, _ = net.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    # One jitted step per call: XLA:CPU runs convolutions inside a scan/while
    # loop ~10x slower than at top level.
    @jax.jit
    def train_step(p, s, xb, yb):
      l, g = jax.value_and_grad(loss_fn)(p, xb, yb)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s, l

    params, s = params0, opt.init(params0)
    x_np, y_np = np.asarray(x_tr), np.asarray(y_tr)
    for i in range(fc.steps):
      idx = rng.integers(0, len(x_np), fc.batch)
      sh = rng.integers(-2, 3, 2)  # light augmentation: shifts of up to 2 px
      xb = np.roll(x_np[idx], (int(sh[0]), int(sh[1])), axis=(1, 2))
      params, s, _ = train_step(params, s, xb, y_np[idx])
    predict = jax.jit(lambda p, x: net.apply({"params": p}, x)[0].argmax(-1))
    acc = lambda x, y: float(np.mean(np.concatenate(
        [np.asarray(predict(params, x[i:i + 1024])) for i in range(0, len(x), 1024)]) == y))
    info = {"heldout_acc": acc(x_te, y_te), "train_acc": acc(np.asarray(x_tr[:4096]),
                                                              np.asarray(y_tr[:4096])),
            "num_classes": len(split), "steps": fc.steps, "train_s": time.perf_counter() - t0,
            "heldout_per_class": fc.holdout, "images_per_class": n}
    if train_lib.is_main_process():  # other processes trained the same net; one writes
      os.makedirs(fc.cache_dir, exist_ok=True)
      # Renamed into place, .json last: a reader sees a complete cache or none.
      with open(path + ".msgpack.tmp", "wb") as f:
        f.write(flax.serialization.to_bytes(params))
      os.replace(path + ".msgpack.tmp", path + ".msgpack")
      with open(path + ".json.tmp", "w") as f:
        json.dump(info, f, indent=1)
      os.replace(path + ".json.tmp", path + ".json")
  info = dict(info, cache=path)
  feat = jax.jit(lambda p, x: net.apply({"params": p}, x)[1])

  def features_fn(x):
    x = np.asarray(x, np.float32)
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    out = np.concatenate([np.asarray(feat(params, x[i:i + 1024])) for i in range(0, len(x), 1024)])
    return out.reshape(*shape[:-3], out.shape[-1]).astype(np.float64)

  return features_fn, info


def jsonable(x):
  """``x`` with numpy arrays and scalars turned into lists and Python numbers (for json.dump)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, np.floating, np.integer)):
    return np.asarray(x).tolist()
  return x


# --- the test classes -----------------------------------------------------------


def test_classes(config, verbose: bool = True) -> dict:
  """The fixed test classes with their support / held-out images.

  Returns a dict: ``names [C]``, ``support [C, K, 28, 28, 1]``,
  ``heldout [C, H, 28, 28, 1]`` and the image indices used.
  """
  with open(TEST_CLASSES_FILE) as f:
    names = json.load(f)["classes"][:config.eval.num_classes]
  split = train_lib.load_split(config, "test", verbose=verbose)
  missing = [n for n in names if n not in split.names]
  if missing:
    raise ValueError(f"test classes {missing[:3]} (from {TEST_CLASSES_FILE}) are not in the "
                     f"{config.dataset!r} test split.")
  k = config.eval.k
  sup, held, idx = [], [], []
  for i, name in enumerate(names):
    x = split.images[split.names.index(name)]
    n_held = min(len(x) for x in split.images) - k
    if n_held < 2:
      raise ValueError(f"eval.k={k} leaves fewer than 2 held-out images in class {name!r}.")
    perm = np.random.default_rng([config.eval.split_seed, i]).permutation(len(x))
    sup.append(x[perm[:k]])
    held.append(x[perm[k:k + n_held]])
    idx.append({"support": perm[:k].tolist(), "heldout": perm[k:k + n_held].tolist()})
  return {"names": names, "support": np.stack(sup), "heldout": np.stack(held), "indices": idx}


# --- adaptation ------------------------------------------------------------------


def _config_from_json(s: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(json.loads(s))


@functools.lru_cache(maxsize=None)
def _adapt_fn(config_json: str, rule_json: str, n_steps: int):
  """Jitted adaptation of every class; the learning rate is an argument, so a grid of
  rates shares one compilation."""
  config = _config_from_json(config_json)
  rule = json.loads(rule_json)

  def adapt_all(params, lr, support_CxK, keys_C):
    ac = train_lib.adapt_config(config, inner_steps=n_steps, rule=dict(rule, lr=lr))
    return jax.vmap(lambda s, k: mg.adapt(params, s, k, ac))(support_CxK, keys_C)
  return jax.jit(adapt_all)


@functools.lru_cache(maxsize=None)
def _generate(config_json: str, per_class: bool):
  model = train_lib.get_model(_config_from_json(config_json))
  return jax.jit(jax.vmap(model.generate, in_axes=(0 if per_class else None, 0)))


def adapt_and_generate(config, meta_params, support_CxK, steps: list[int], key: jax.Array,
                       n_gen: int, rule: dict | None = None) -> dict[int, np.ndarray]:
  """Adapts ``meta_params`` to each class for every T in ``steps``; samples ``n_gen`` per class.

  Each T is a fresh adaptation of T steps from the meta-parameters (with Adam
  as the inner optimiser, its state starts at zero every time). Class ``c`` at
  ``T`` adapts with key ``fold_in(fold_in(key, c), T)``; its latents for T are
  drawn from ``fold_in(key, 1e6 + T)``.

  Args:
    rule: the adaptation rule (``train_lib.default_rule`` fields); default the config's.

  Returns ``{T: images [C, n_gen, 28, 28, 1]}``.
  """
  cj = json.dumps(config.to_dict(), sort_keys=True)
  rule = dict(train_lib.default_rule(config), **(rule or {}))
  rj = json.dumps({k: v for k, v in rule.items() if k not in ("lr", "lr_mult")}, sort_keys=True)
  C = support_CxK.shape[0]
  model = train_lib.get_model(config)
  params = mg.recipes.with_rule(meta_params, rule)
  sup = jnp.asarray(support_CxK)
  out = {}
  for t in sorted(steps):
    z = jax.random.normal(jax.random.fold_in(key, 1_000_000 + t), (C, n_gen, model.z_dim))
    if t == 0:
      g = params.init.g if isinstance(params, mg.MetaSGDParams) else params.g
      out[t] = np.asarray(_generate(cj, False)(g, z))
      continue
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), t))(jnp.arange(C))
    adapted = _adapt_fn(cj, rj, t)(params, jnp.float32(rule["lr"]), sup, keys)
    out[t] = np.asarray(_generate(cj, True)(adapted.g, z))
  return out


# --- tuning the test-time rule on the validation alphabets ------------------------


def rule_grid(config, meta_params=None) -> list[dict]:
  """The rules every method is tuned over (``eval.tune_lrs`` x ``eval.tune_g_trainable``).

  For Meta-SGD the learning rates of the grid become multipliers of its learned
  rates (``lr / inner_lr``), so every method gets a grid of the same size.
  """
  ec, base = config.eval, train_lib.default_rule(config)
  lrs = train_lib.parse_list(ec.get("tune_lrs", ""), float) or [base["lr"]]
  gts = [g.strip() for g in str(ec.get("tune_g_trainable", "")).split(";") if g.strip()]
  grid = [dict(base, lr=lr, g_trainable=g) for g in (gts or [base["g_trainable"]]) for lr in lrs]
  if isinstance(meta_params, mg.MetaSGDParams):
    grid = [dict(r, lr=base["lr"], lr_mult=r["lr"] / base["lr"]) for r in grid]
  return grid


def rule_name(rule: dict) -> str:
  lr = f"x{rule['lr_mult']:g} learned rates" if "lr_mult" in rule else f"lr {rule['lr']:g}"
  return f"{rule['opt']} {lr}, G: {rule['g_trainable']}, D: {rule['d_trainable']}"


def val_classes(config) -> dict:
  """``eval.tune_classes`` validation-alphabet classes, spread evenly over the alphabets."""
  split = train_lib.load_split(config, "val", verbose=False)
  n = int(config.eval.tune_classes)
  rng = np.random.default_rng([config.eval.split_seed, 1])
  alphabets = sorted(set(split.groups))
  by_alpha = {a: list(rng.permutation([i for i, g in enumerate(split.groups) if g == a]))
              for a in alphabets}
  pick = []
  while len(pick) < min(n, len(split)):  # round robin over the alphabets
    for a in alphabets:
      if by_alpha[a] and len(pick) < n:
        pick.append(by_alpha[a].pop())
  k = config.eval.k
  n_held = min(len(split.images[i]) for i in pick) - k
  sup, held = [], []
  for i in pick:
    perm = rng.permutation(len(split.images[i]))
    sup.append(split.images[i][perm[:k]])
    held.append(split.images[i][perm[k:k + n_held]])
  return {"names": [split.names[i] for i in pick], "support": np.stack(sup),
          "heldout": np.stack(held)}


def scaled_features(features_fn, reference):
  """``features_fn`` divided by one constant: the reference images' features get unit mean
  square, so the cubic KID kernel sees O(1) inner products whatever the net's scale."""
  scale = float(np.sqrt(np.mean(features_fn(reference) ** 2))) or 1.0  # 0: dead features
  return lambda x: features_fn(x) / scale


def tune_rules(config, params_by_run: dict, features_fn, verbose: bool = True) -> dict:
  """The test-time rule of every method: the grid rule with the lowest validation KID.

  Every ``(method, seed)`` adapts with every rule of a grid of the same size
  (:func:`rule_grid`) at T = ``eval.headline``, with the same adaptation noise; a
  method's score for a rule is its mean validation KID over its seeds, and the best
  rule serves all of them. Pooling over seeds keeps one noisy seed from flipping a
  close choice (per-seed choices changed with the CPU: experiments/README.md).

  Returns ``{"rules": {(method, seed): rule}, "scores": {"method|seed": {rule name:
  KID}}, "method_scores": {method: {rule name: mean KID}}, "classes": [...]}``.
  """
  grid0 = rule_grid(config)
  out = {"rules": {}, "scores": {}, "method_scores": {}, "classes": []}
  if len(grid0) == 1:
    out["rules"] = {run: rule_grid(config, p)[0] for run, p in params_by_run.items()}
    return out
  vc = val_classes(config)
  out["classes"] = vc["names"]
  features_fn = scaled_features(features_fn, vc["heldout"])
  f_held = features_fn(vc["heldout"])
  t = int(config.eval.headline)
  done, grids, secs = {}, {}, {}  # runs sharing one parameter object (transfer of one GAN) run once
  for (method, seed), params in params_by_run.items():
    t0 = time.perf_counter()
    # a method's seeds share one grid: it depends on the config and the parameters' type only
    if method not in grids:
      grids[method] = {rule_name(r): r for r in rule_grid(config, params)}
    if (method, id(params)) not in done:
      scores = {}
      for name, rule in grids[method].items():
        gen = adapt_and_generate(config, params, vc["support"], [t], jax.random.key(20_000),
                                 config.eval.n_gen, rule)[t]
        f_gen = features_fn(gen)
        scores[name] = float(np.mean([M.kid(f_gen[c], f_held[c]) for c in range(len(f_gen))]))
      done[(method, id(params))] = scores
    out["scores"][f"{method}|{seed}"] = done[(method, id(params))]
    secs[method] = secs.get(method, 0.0) + time.perf_counter() - t0
  for method, grid in grids.items():
    runs = [r for r in params_by_run if r[0] == method]
    pooled = {n: float(np.mean([out["scores"][f"{m}|{s}"][n] for m, s in runs])) for n in grid}
    best = min(pooled, key=pooled.get)
    out["method_scores"][method] = pooled
    for run in runs:
      out["rules"][run] = grid[best]
    if verbose:
      print(f"[tune] {method} ({len(runs)} seed(s)): {best} (mean validation KID x1e3 "
            f"{1e3 * pooled[best]:.3g}; {secs[method]:.1f}s)", flush=True)
  return out


def copy_baseline(support_CxK, n: int, seed: int) -> np.ndarray:
  """The K support images, cycled to ``n`` per class, each with a small random affine jitter."""
  rng = np.random.default_rng(seed)
  C, K = support_CxK.shape[:2]
  reps = support_CxK[:, np.arange(n) % K]
  flat = reps.reshape(C * n, *support_CxK.shape[2:])
  return mg.data.jitter(flat, rng).reshape(reps.shape)


# --- scoring --------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _linear_trainer(steps: int, num_classes: int):
  opt = optax.adam(0.05)

  @jax.jit
  def fit(x, y):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    w = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}

    def loss(w):
      logits = xs @ w["w"] + w["b"]
      return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
              + 1e-3 * jnp.sum(w["w"] ** 2))

    def body(carry, _):
      w, s = carry
      u, s = opt.update(jax.grad(loss)(w), s, w)
      return (optax.apply_updates(w, u), s), None
    (w, _), _ = jax.lax.scan(body, (w, opt.init(w)), None, length=steps)
    return w, mu, sd

  return fit


def lowdata_accuracy(config, f_sup_CxKxD, f_held_CxHxD, f_aug_CxNxD=None) -> np.ndarray:
  """Per-class held-out accuracy of a linear classifier on support (+ generated) features."""
  C, K, D = f_sup_CxKxD.shape
  xs = [f_sup_CxKxD.reshape(-1, D)]
  ys = [np.repeat(np.arange(C), K)]
  if f_aug_CxNxD is not None:
    xs.append(f_aug_CxNxD.reshape(-1, D))
    ys.append(np.repeat(np.arange(C), f_aug_CxNxD.shape[1]))
  w, mu, sd = _linear_trainer(config.eval.classifier_steps, C)(
      jnp.asarray(np.concatenate(xs), jnp.float32), jnp.asarray(np.concatenate(ys)))
  H = f_held_CxHxD.shape[1]
  pred = np.asarray(((jnp.asarray(f_held_CxHxD.reshape(-1, D), jnp.float32) - mu) / sd)
                    @ w["w"] + w["b"]).argmax(-1)
  return (pred == np.repeat(np.arange(C), H)).reshape(C, H).mean(1)


def _ratio(a: float, b: float) -> float:
  """a / b, NaN when b is 0 (e.g. all features dead in an untrained feature net)."""
  return float(a) / float(b) if b > 0 else float("nan")


def score(config, f_gen, f_sup, f_held) -> tuple[dict, float]:
  """Per-class metrics ``{name: [C]}`` and the pooled FD of one set of generated features."""
  C, K = f_sup.shape[:2]
  protos = f_held.mean(1)
  per = {m: np.zeros(C) for m in METRICS}
  for c in range(C):
    per["kid"][c] = M.kid(f_gen[c], f_held[c])
    per["fidelity"][c] = M.nearest_prototype_accuracy(f_gen[c], np.full(len(f_gen[c]), c), protos)
    per["diversity"][c] = _ratio(M.mean_pairwise_distance(f_gen[c]),
                                 M.mean_pairwise_distance(f_held[c]))
    # nearest-neighbour distance to the K support images vs to K held-out images
    # (same reference-set size); < 1 means samples sit closer to what they saw.
    per["memorisation"][c] = _ratio(M.nearest_neighbour_distance(f_gen[c], f_sup[c]).mean(),
                                    M.nearest_neighbour_distance(f_gen[c], f_held[c][:K]).mean())
  per["lowdata_acc"] = lowdata_accuracy(config, f_sup, f_held, f_gen[:, :config.eval.n_aug])
  fd = M.frechet_distance(f_gen.reshape(-1, f_gen.shape[-1]), f_held.reshape(-1, f_held.shape[-1]))
  return per, fd


def real_scores(config, f_sup, f_held) -> tuple[dict, float]:
  """The ceiling: held-out real images of each class scored as if they were samples.

  The held-out images of a class split into two halves A and B; each half is
  scored against the other as reference (KID, diversity, memorisation,
  low-data accuracy with the half added to the K support images, tested on the
  other half) and the two directions are averaged. Class fidelity is
  leave-one-out over all held-out images: an image's own class prototype
  excludes it. Pooled FD: all A halves against all B halves.
  """
  C, H, D = f_held.shape
  K = f_sup.shape[1]
  halves = (f_held[:, :H // 2], f_held[:, H // 2:])
  protos = f_held.mean(1)
  per = {m: np.zeros(C) for m in METRICS}
  for c in range(C):
    a, b = halves[0][c], halves[1][c]
    per["kid"][c] = M.kid(a, b)
    per["diversity"][c] = np.mean([_ratio(M.mean_pairwise_distance(x),
                                          M.mean_pairwise_distance(f_held[c])) for x in (a, b)])
    per["memorisation"][c] = np.mean([
        _ratio(M.nearest_neighbour_distance(x, f_sup[c]).mean(),
               M.nearest_neighbour_distance(x, y[:K]).mean()) for x, y in ((a, b), (b, a))])
    hits = []
    for i in range(H):
      p = protos.copy()
      p[c] = (f_held[c].sum(0) - f_held[c, i]) / (H - 1)
      hits.append(M.nearest_prototype_accuracy(f_held[c, i:i + 1], [c], p))
    per["fidelity"][c] = np.mean(hits)
  per["lowdata_acc"] = 0.5 * (lowdata_accuracy(config, f_sup, halves[1], halves[0])
                              + lowdata_accuracy(config, f_sup, halves[0], halves[1]))
  fd = M.frechet_distance(halves[0].reshape(-1, D), halves[1].reshape(-1, D))
  return per, fd


def evaluate(config, params_by_run: dict, features_fn, verbose: bool = True,
             keep_images: bool = True, rules: dict | None = None) -> dict:
  """Runs the protocol on every ``(method, meta_seed) -> meta-parameters``.

  Args:
    rules: ``{(method, meta_seed): rule}`` test-time rules (:func:`tune_rules`);
      default the config's rule for every run.

  Returns a dict with ``per_class`` rows, ``fd`` rows, ``classes``, ``lowdata_real``
  (K real images only) and ``images`` (grid material) -- see :func:`summarise`.
  The rows include the ``copy`` baseline and the ``real`` ceiling (held-out
  images scored as samples, :func:`real_scores`).
  """
  ec = config.eval
  steps = train_lib.parse_list(ec.steps, int)
  if ec.headline not in steps:
    raise ValueError(f"eval.headline={ec.headline} is not in eval.steps={steps}.")
  adapt_seeds = train_lib.parse_list(ec.adapt_seeds, int)
  rules = rules or {}
  tc = test_classes(config, verbose=verbose)
  features_fn = scaled_features(features_fn, tc["heldout"])
  f_sup, f_held = features_fn(tc["support"]), features_fn(tc["heldout"])
  C = len(tc["names"])
  rows, fds, images = [], [], {}

  def add(method, mseed, a, per, fd, feats=None):
    for t in steps if feats is None else [feats[0]]:
      rows.extend(dict(method=method, meta_seed=mseed, adapt_seed=a, T=t, cls=c,
                       **{m: float(per[m][c]) for m in METRICS}) for c in range(C))
      fds.append(dict(method=method, meta_seed=mseed, adapt_seed=a, T=t, fd=fd,
                      **({"feats": feats[1]} if feats is not None else {})))

  real_only = {a: lowdata_accuracy(config, f_sup, f_held) for a in adapt_seeds}
  per, fd = real_scores(config, f_sup, f_held)
  add("real", 0, adapt_seeds[0], per, fd)  # the same for every T and adaptation seed
  for a in adapt_seeds:
    f_copy = features_fn(copy_baseline(tc["support"], ec.n_gen, seed=a))
    per, fd = score(config, f_copy, f_sup, f_held)
    add("copy", 0, a, per, fd)  # the copy baseline does not depend on T
    if a == adapt_seeds[0] and keep_images:
      images["copy"] = {t: copy_baseline(tc["support"], ec.n_gen, seed=a) for t in steps}
  for (method, mseed), params in params_by_run.items():
    for a in adapt_seeds:
      t0 = time.perf_counter()
      # Runs of one meta seed share adaptation noise (paired), seeds differ.
      key = jax.random.fold_in(jax.random.key(10_000 + a), mseed)
      gen = adapt_and_generate(config, params, tc["support"], steps, key, ec.n_gen,
                               rules.get((method, mseed)))
      for t in steps:
        f_gen = features_fn(gen[t])
        per, fd = score(config, f_gen, f_sup, f_held)
        add(method, mseed, a, per, fd, feats=(t, f_gen))
      if keep_images and mseed == min(s for (m, s) in params_by_run if m == method) \
          and a == adapt_seeds[0]:
        images[method] = gen
      if verbose:
        print(f"[eval] {method} meta seed {mseed} adapt seed {a}: "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
  return {"per_class": rows, "fd": fds, "classes": tc["names"], "indices": tc["indices"],
          "support": tc["support"], "f_held": f_held, "images": images,
          "lowdata_real": {a: v.tolist() for a, v in real_only.items()}}


# --- summary, table, figures -------------------------------------------------------


def _method_seeds(rows, method) -> list[int]:
  return sorted({r["meta_seed"] for r in rows if r["method"] == method})


def _seed_class_matrix(rows, method, t, metric, C) -> np.ndarray:
  """``[S, C]`` values of one method at one T: meta seeds x classes, mean over adaptation seeds."""
  seeds = _method_seeds(rows, method)
  vals, cnt = np.zeros((len(seeds), C)), np.zeros((len(seeds), C))
  for r in rows:
    if r["method"] == method and r["T"] == t:
      i = seeds.index(r["meta_seed"])
      vals[i, r["cls"]] += r[metric]
      cnt[i, r["cls"]] += 1
  return vals / np.maximum(cnt, 1)


def summarise(config, res: dict) -> dict:
  """Means, 95% bootstrap CIs over seeds and classes, and paired tests against ``transfer``.

  ``metrics["<method>|<T>|<metric>"]`` holds ``mean``, ``ci`` (meta seeds and
  classes resampled), ``per_class`` (mean over seeds) and ``per_seed``;
  ``vs_transfer["<method>|<T>"]`` the paired sign-flip test of KID against
  ``transfer`` over classes: when both have the same meta seeds (the same
  pre-trained GAN and adaptation noise per seed), each class's difference is
  first paired within every seed and averaged over the seeds; otherwise it is
  the difference of the per-class means. Classes are the exchangeable unit
  (cells of one seed share a meta-trained model, so they are not independent).
  """
  ec = config.eval
  steps = train_lib.parse_list(ec.steps, int)
  C = len(res["classes"])
  methods = list(dict.fromkeys(r["method"] for r in res["per_class"]))
  out = {"methods": methods, "steps": steps, "metrics": {}, "fd": {}, "vs_transfer": {}}
  cells = {}
  for m in methods:
    for t in steps:
      for metric in METRICS:
        v = _seed_class_matrix(res["per_class"], m, t, metric, C)
        cells[(m, t, metric)] = v
        out["metrics"][f"{m}|{t}|{metric}"] = {
            "mean": float(v.mean()), "ci": M.hierarchical_bootstrap_ci(v, ec.n_boot),
            "per_class": v.mean(0).tolist(), "per_seed": v.mean(1).tolist()}
      runs = [f for f in res["fd"] if f["method"] == m and f["T"] == t]
      out["fd"][f"{m}|{t}"] = {"mean": float(np.mean([f["fd"] for f in runs]))}
      if t == ec.headline and all("feats" in f for f in runs):
        f_held = res["f_held"]

        def fd_stat(cls_idx, runs=runs):
          return np.mean([M.frechet_distance(f["feats"][cls_idx].reshape(-1, f_held.shape[-1]),
                                             f_held[cls_idx].reshape(-1, f_held.shape[-1]))
                          for f in runs])
        out["fd"][f"{m}|{t}"]["ci"] = M.bootstrap_ci(np.arange(C), min(ec.n_boot, 200),
                                                     statistic=fd_stat)
  real = np.mean([v for v in res["lowdata_real"].values()], axis=0)
  out["lowdata_real"] = {"mean": float(real.mean()), "ci": M.bootstrap_ci(real, ec.n_boot)}
  if "transfer" in methods:
    for m in methods:
      if m == "transfer":
        continue
      for t in steps:
        a, b = cells[(m, t, "kid")], cells[("transfer", t, "kid")]
        same_seeds = (_method_seeds(res["per_class"], m)
                      == _method_seeds(res["per_class"], "transfer"))
        diff_C = (a - b).mean(0) if same_seeds else a.mean(0) - b.mean(0)
        test = M.paired_test(diff_C, np.zeros(C))
        out["vs_transfer"][f"{m}|{t}"] = dict(
            test, paired="classes (differences within each seed, averaged over seeds)"
            if same_seeds else "classes (per-class means)")
  meta = [m for m in methods if m in train_lib.META_METHODS]
  if meta:
    out["best_method"] = min(meta, key=lambda m: out["metrics"][f"{m}|{ec.headline}|kid"]["mean"])
  return out


def _fmt(d, scale=1.0, digits=2):
  lo, hi = d["ci"]
  f = lambda x: f"{x * scale:.{digits}f}" if digits else f"{x * scale:.3g}"
  return f"{f(d['mean'])} [{f(lo)}, {f(hi)}]"


_NAMES = {"copy": "copy (jittered support)", "real": "real (held-out images)"}


def _order(methods: list[str]) -> list[str]:
  """Reference rows first (real, copy), then the methods in config order."""
  return [m for m in ("real", "copy") if m in methods] + [m for m in methods
                                                          if m not in ("real", "copy")]


def markdown_table(config, summary: dict, info: dict) -> str:
  """The headline results table (T = eval.headline) and KID against T."""
  ec = config.eval
  t = ec.headline
  s = summary
  lines = [f"**Adaptation to {info['num_test_classes']} unseen Omniglot classes, K = {ec.k}, "
           f"T = {t} steps** ({info['seeds']})",
           "",
           "| method | KID x1e3 (lower better) | FD pooled | class fidelity | diversity gen/real "
           "| memorisation NN ratio | low-data acc (K real + gen) | KID vs transfer: diff x1e3, p |",
           "|---|---|---|---|---|---|---|---|"]
  for m in _order(s["methods"]):
    g = lambda metric: s["metrics"][f"{m}|{t}|{metric}"]
    fd = s["fd"][f"{m}|{t}"]
    fd_s = (f"{fd['mean']:.3g} [{fd['ci'][0]:.3g}, {fd['ci'][1]:.3g}]" if "ci" in fd
            else f"{fd['mean']:.3g}")
    vt = s["vs_transfer"].get(f"{m}|{t}")
    vt_s = (f"{vt['mean_diff'] * 1e3:+.3g}, p={vt['p']:.3f}" if vt else
            "(reference)" if m == "transfer" else "")
    lines.append(f"| {_NAMES.get(m, m)} | {_fmt(g('kid'), 1e3, 0)} | {fd_s} | "
                 f"{_fmt(g('fidelity'))} | {_fmt(g('diversity'))} | {_fmt(g('memorisation'))} | "
                 f"{_fmt(g('lowdata_acc'))} | {vt_s} |")
  lines.append(f"| K real images only | | | | | | {_fmt(s['lowdata_real'])} | |")
  lines += ["", f"**KID x1e3 against adaptation steps T** ({info['seeds']})", "",
            "| method | " + " | ".join(f"T={x}" for x in s["steps"]) + " |",
            "|---|" + "---|" * len(s["steps"])]
  for m in _order(s["methods"]):
    if m in ("real", "copy"):
      continue  # the same at every T
    lines.append(f"| {m} | " + " | ".join(_fmt(s["metrics"][f"{m}|{x}|kid"], 1e3, 0)
                                          for x in s["steps"]) + " |")
  fn = info["featnet"]
  lines += ["", f"Feature network: {fn['num_classes']}-way CNN on meta-training classes only, "
            f"held-out accuracy {fn['heldout_acc']:.3f} on those classes; on the "
            f"{info['num_test_classes']} test classes its nearest-prototype accuracy on real "
            f"held-out images (the `real` row's fidelity) is "
            f"{s['metrics'][f'real|{t}|fidelity']['mean']:.3f}. {info['training']}"]
  if info.get("health"):
    h = info["health"]
    lines += ["", f"Training health: {h['nonfinite_skipped']} non-finite updates skipped over "
              f"{h['runs']} training runs; largest |loss| logged {h['max_abs_loss']:.3g}."]
  if info.get("rules"):
    lines += ["", "Test-time rules (tuned on validation alphabets): " + "; ".join(
        f"{run}: {rule}" for run, rule in info["rules"].items()) + "."]
  return "\n".join(lines)


def plot_curves(summary: dict, path: str) -> None:
  """Adaptation curves: KID and class fidelity against T, one line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  steps = summary["steps"]
  for ax, metric, scale, label in ((axes[0], "kid", 1e3, "KID x1e3 (lower is better)"),
                                   (axes[1], "fidelity", 1, "class fidelity (higher is better)")):
    for m in summary["methods"]:
      d = [summary["metrics"][f"{m}|{t}|{metric}"] for t in steps]
      mean = np.array([x["mean"] for x in d]) * scale
      lo = np.array([x["ci"][0] for x in d]) * scale
      hi = np.array([x["ci"][1] for x in d]) * scale
      style = ({"copy": dict(ls="--", color="gray"), "real": dict(ls=":", color="black")}
               .get(m, dict(marker="o", ms=3)))
      ax.plot(steps, mean, label=m, **style)
      if m not in ("copy", "real"):
        ax.fill_between(steps, lo, hi, alpha=0.15)
    ax.set_xlabel("adaptation steps T")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  # KID spans orders of magnitude between methods (and can be slightly negative:
  # it is unbiased), so a symmetric log axis keeps every line readable.
  axes[0].set_yscale("symlog", linthresh=100.0)  # linear within +-100: the real row sits at ~0
  axes[1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sample_grid(support, images: dict, t_cols: tuple[int, int], n_classes: int,
                n_samples: int = 6) -> np.ndarray:
  """One image: per class a row ``support | samples at T0 | samples at T1`` in [0, 1]."""
  C, K, H, W, _ = support.shape
  n_classes = min(n_classes, C)
  gap = np.ones((H, W // 2))
  rows = []
  for c in range(n_classes):
    parts = [np.concatenate(list(support[c, :, :, :, 0]), axis=1), gap]
    for t in t_cols:
      parts += [np.concatenate(list(images[t][c, :n_samples, :, :, 0]), axis=1), gap]
    rows.append(np.concatenate(parts[:-1], axis=1))
  return np.clip((np.stack(rows).reshape(-1, rows[0].shape[1]) + 1) / 2, 0, 1)


def headline_picture(config, res: dict, summary: dict, path: str, n_classes: int = 8,
                     n_samples: int = 6) -> str | None:
  """The README's picture: per unseen class, support | best meta method | transfer (T = headline)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  best, t = summary.get("best_method"), config.eval.headline
  cols = [m for m in (best, "transfer") if m in res["images"]]
  if not cols:
    return None
  sup = res["support"]
  n_classes = min(n_classes, sup.shape[0])
  blocks = [[sup[c, :, :, :, 0] for c in range(n_classes)]]
  blocks += [[res["images"][m][t][c, :n_samples, :, :, 0] for c in range(n_classes)] for m in cols]
  h, w = sup.shape[2:4]
  gap = np.ones((h, w // 2))
  rows = [np.concatenate(sum(([np.concatenate(list(b[c]), axis=1), gap] for b in blocks), [])[:-1],
                         axis=1) for c in range(n_classes)]
  img = np.clip((np.concatenate(rows, axis=0) + 1) / 2, 0, 1)
  fig, ax = plt.subplots(figsize=(img.shape[1] / 40, img.shape[0] / 40 + 0.5))
  ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  x, titles = 0, [f"support (K={sup.shape[1]})"] + [f"{m}, T={t}" for m in cols]
  for b, title in zip(blocks, titles):
    width = b[0].shape[0] * w
    ax.text(x + width / 2, -4, title, ha="center", va="bottom", fontsize=9)
    x += width + w // 2
  ax.axis("off")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def save_grids(config, res: dict, fig_dir: str) -> list[str]:
  """A sample grid per method (support | T = 0 | T = headline) and one with all methods."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  t_cols = (0, config.eval.headline) if 0 in res["images"].get("copy", {}) else (
      config.eval.headline, config.eval.headline)
  paths, grids = [], {}
  for m, imgs in res["images"].items():
    g = sample_grid(res["support"] if m != "copy" else res["support"], imgs, t_cols,
                    config.eval.grid_classes)
    grids[m] = g
    p = os.path.join(fig_dir, f"samples_{m}.png")
    train_lib.save_png(p, g)
    paths.append(p)
  ms = [m for m in res["images"] if m != "copy"]
  if ms:
    h, w = grids[ms[0]].shape
    fig, axes = plt.subplots(len(ms), 1, figsize=(w / 60, len(ms) * (h / 60 + 0.35)))
    for ax, m in zip(np.atleast_1d(axes), ms):
      ax.imshow(grids[m], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      ax.set_title(f"{m}: support (K={config.eval.k}) | T={t_cols[0]} | T={t_cols[1]}",
                   fontsize=8)
      ax.axis("off")
    fig.tight_layout()
    p = os.path.join(fig_dir, "samples_all.png")
    fig.savefig(p, dpi=80)
    plt.close(fig)
    paths.append(p)
  return paths
