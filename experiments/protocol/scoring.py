"""Stage 4, scoring: adapt every run to the test classes and score its samples against
the held-out images (KID, FD, class fidelity, diversity, memorisation, low-data accuracy),
next to the copy baseline and the real-image ceiling."""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metagan_jax as mg
from metagan_jax import metrics as M

from experiments import train_lib
from experiments.protocol.classes import test_classes
from experiments.protocol.features import scaled_features

METRICS = ("kid", "fidelity", "diversity", "memorisation", "lowdata_acc")


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


def copy_baseline(support_CxK, n: int, seed: int) -> np.ndarray:
  """The K support images, cycled to ``n`` per class, each with a small random affine jitter."""
  rng = np.random.default_rng(seed)
  C, K = support_CxK.shape[:2]
  reps = support_CxK[:, np.arange(n) % K]
  flat = reps.reshape(C * n, *support_CxK.shape[2:])
  return mg.data.jitter(flat, rng).reshape(reps.shape)


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
