"""Stage 4, scoring: adapt every run to the test classes and score its samples against
the held-out images (KID, FD, class fidelity, diversity, memorisation, low-data accuracy
of a linear probe and of a CNN trained from scratch), next to the copy baseline and the
real-image ceiling."""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metagan_jax as mg
from experiments import train_lib
from experiments.protocol.classes import test_classes
from experiments.protocol.features import FeatureNet, scaled_features
from metagan_jax import augment
from metagan_jax import metrics as M
from metagan_jax.runs import N_AVG  # the centre of a truncated sample, as metagan generate

METRICS = ("kid", "fidelity", "diversity", "memorisation", "lowdata_acc", "lowdata_cnn_acc")


def _config_from_json(s: str):
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(json.loads(s))


def max_steps(config) -> int:
  """The longest adaptation the protocol runs: the largest T of ``eval.steps`` and the headline."""
  ec = config.eval
  return max([int(ec.get("headline", 0)), *train_lib.parse_list(ec.get("steps", ""), int)])


@functools.cache
def _adapt_fn(config_json: str, rule_json: str, n_max: int):
  """Jitted adaptation of every class for ``t <= n_max`` steps. The learning rate and T are
  arguments, so a grid of rates and every T of the evaluation share one compilation
  (``mg.adapt_prefix``: the same numbers as a T-step ``mg.adapt``)."""
  config = _config_from_json(config_json)
  rule = json.loads(rule_json)

  def adapt_all(params, lr, support_CxK, keys_C, t):
    ac = train_lib.adapt_config(config, inner_steps=n_max, rule=dict(rule, lr=lr))
    return jax.vmap(lambda s, k: mg.adapt_prefix(params, s, k, ac, t))(support_CxK, keys_C)

  return jax.jit(adapt_all)


def _per_class(fn, g, z_CxN, per_class: bool, *sup_CxK):
  # One class at a time (lax.map), not one vmap over all classes: on CPU, C batches of
  # n_gen latents through G take 1.8-2.8x less time than one batch of C x n_gen
  # (docs/benchmarks.md, "The main job's time"). A conditional G draws class c from its
  # own support ``sup_CxK[c]`` (an unconditional one gets no ``sup_CxK``).
  if per_class:
    return jax.lax.map(lambda a: fn(*a), (g, z_CxN, *sup_CxK))
  return jax.lax.map(lambda a: fn(g, *a), (z_CxN, *sup_CxK))


@functools.cache
def _generate(config_json: str, per_class: bool):
  """Samples ``[C, n, ...]`` of per-class generators (or of one shared G); a conditional
  model's take the classes' supports ``[C, K, ...]`` as a third argument."""
  model = train_lib.get_model(_config_from_json(config_json))
  return jax.jit(lambda g, z, *sup: _per_class(model.generate, g, z, per_class, *sup))


@functools.cache
def _generate_truncated(config_json: str, per_class: bool):
  """Truncated samples; ``psi`` is an argument, so a grid of truncations shares one compile."""
  model = train_lib.get_model(_config_from_json(config_json))

  def fn(g, z, psi, z_avg, *sup):
    return _per_class(
      lambda g1, z1, *s1: model.generate_truncated(g1, z1, psi, z_avg, *s1), g, z, per_class, *sup
    )

  return jax.jit(fn)


def adapt_and_generate(
  config,
  meta_params,
  support_CxK,
  steps: list[int],
  key: jax.Array,
  n_gen: int,
  rule: dict | None = None,
) -> dict[int, np.ndarray]:
  """Adapts ``meta_params`` to each class for every T in ``steps``; samples ``n_gen`` per class.

  Each T is a fresh adaptation of T steps from the meta-parameters (with Adam
  as the inner optimiser, its state starts at zero every time). Class ``c`` at
  ``T`` adapts with key ``fold_in(fold_in(key, c), T)``; its latents for T are
  drawn from ``fold_in(key, 1e6 + T)``. A rule with ``psi < 1`` samples with
  truncation (``GanModel.generate_truncated``), centred on ``N_AVG`` latents from
  ``fold_in(key, 2e6 + T)``.

  Args:
    rule: the adaptation rule (``train_lib.default_rule`` fields); default the config's.

  Returns ``{T: images [C, n_gen, 28, 28, 1]}``.
  """
  psi = float((rule or {}).get("psi", 1.0))
  out = adapt_and_generate_psis(config, meta_params, support_CxK, steps, key, n_gen, rule, [psi])
  return {t: imgs[psi] for t, imgs in out.items()}


def adapt_and_generate_psis(
  config,
  meta_params,
  support_CxK,
  steps: list[int],
  key: jax.Array,
  n_gen: int,
  rule: dict | None,
  psis,
  max_classes: int = 0,
) -> dict[int, dict[float, np.ndarray]]:
  """:func:`adapt_and_generate` at several truncations of one adaptation: ``{T: {psi: images}}``.

  The rule's own ``psi`` is ignored; ``psi = 1`` samples exactly as ``model.generate``.
  ``max_classes > 0`` adapts and samples that many classes at a time, with the same keys and
  latents as all at once: memory for C per-class GANs and their optimiser states grows
  with C (100 classes of ``fsgan28`` took 14 GB).
  """
  cj = json.dumps(config.to_dict(), sort_keys=True)
  rule = dict(train_lib.default_rule(config), **(rule or {}))
  rj = json.dumps(
    {k: v for k, v in rule.items() if k not in ("lr", "lr_mult", "psi")}, sort_keys=True
  )
  C = support_CxK.shape[0]
  model = train_lib.get_model(config)
  params = mg.recipes.with_rule(meta_params, rule)
  sup = jnp.asarray(support_CxK)
  cond = (sup,) if model.conditional else ()  # a conditional G draws from each class's support
  step = C if max_classes <= 0 else int(max_classes)
  out = {}
  for t in sorted(steps):
    z = jax.random.normal(jax.random.fold_in(key, 1_000_000 + t), (C, n_gen, model.z_dim))
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), t))(jnp.arange(C))
    if any(float(psi) != 1.0 for psi in psis):
      z_avg = jax.random.normal(jax.random.fold_in(key, 2_000_000 + t), (N_AVG, model.z_dim))
    per_class = t > 0
    g = params.init.g if isinstance(params, mg.MetaSGDParams) else params.g  # T = 0: shared
    adapt = _adapt_fn(cj, rj, max(t, max_steps(config))) if per_class else None
    chunks = {float(psi): [] for psi in psis}
    for i in range(0, C, step):
      sl = slice(i, i + step)
      cond_i = tuple(c[sl] for c in cond)
      if per_class:
        g = adapt(params, jnp.float32(rule["lr"]), sup[sl], keys[sl], jnp.int32(t)).g
      for psi in map(float, psis):
        if psi == 1.0:
          x = _generate(cj, per_class)(g, z[sl], *cond_i)
        else:
          x = _generate_truncated(cj, per_class)(g, z[sl], jnp.float32(psi), z_avg, *cond_i)
        chunks[psi].append(np.asarray(x))
    out[t] = {psi: np.concatenate(xs) for psi, xs in chunks.items()}
  return out


def copy_baseline(support_CxK, n: int, seed: int) -> np.ndarray:
  """The K support images, cycled to ``n`` per class, each with a small random affine jitter."""
  rng = np.random.default_rng(seed)
  C, K = support_CxK.shape[:2]
  reps = support_CxK[:, np.arange(n) % K]
  flat = reps.reshape(C * n, *support_CxK.shape[2:])
  return mg.data.jitter(flat, rng).reshape(reps.shape)


@functools.cache
def _linear_trainer(steps: int, num_classes: int):
  opt = optax.adam(0.05)

  @jax.jit
  def fit(x, y):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    w = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}

    def loss(w):
      logits = xs @ w["w"] + w["b"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 1e-3 * jnp.sum(
        w["w"] ** 2
      )

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
    jnp.asarray(np.concatenate(xs), jnp.float32), jnp.asarray(np.concatenate(ys))
  )
  H = f_held_CxHxD.shape[1]
  pred = np.asarray(
    ((jnp.asarray(f_held_CxHxD.reshape(-1, D), jnp.float32) - mu) / sd) @ w["w"] + w["b"]
  ).argmax(-1)
  return (pred == np.repeat(np.arange(C), H)).reshape(C, H).mean(1)


def low_data_cnn(num_classes: int) -> FeatureNet:
  """The low-data classifier of the anchors' protocol: conv 32, conv 64, dense 128, from scratch."""
  return FeatureNet(num_classes, dim=128, widths=(32, 64))


@functools.cache
def _cnn_fns(num_classes: int, batch: int, lr: float, shift: float):
  net, opt = low_data_cnn(num_classes), optax.adam(lr)

  def step(p, s, x_all, y_all, key):
    k_idx, k_aug = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch,), 0, x_all.shape[0])
    xb = augment.translate(k_aug, x_all[idx], ratio=shift)  # the standard augmentation

    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(
        net.apply({"params": p}, xb)[0], y_all[idx]
      ).mean()

    u, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  # All steps in one compiled loop: with im2col convolutions (layers.Conv3x3) that is
  # bitwise the same as one call per step and 1.8-1.9x faster on CPU (docs/benchmarks.md).
  @functools.partial(jax.jit, static_argnums=(4,))
  def train(p, s, x_all, y_all, n_steps, key):
    body = lambda i, ps: step(*ps, x_all, y_all, jax.random.fold_in(key, i))
    return jax.lax.fori_loop(0, n_steps, body, (p, s))

  init = jax.jit(lambda key, x: net.init(key, x[:1])["params"])
  predict = jax.jit(lambda p, x: net.apply({"params": p}, x)[0].argmax(-1))
  return init, opt.init, train, predict, step


def lowdata_cnn_accuracy(config, sup_CxK, held_CxH, aug_CxN=None, seed: int = 0) -> np.ndarray:
  """Per-class held-out accuracy of a CNN trained from scratch on support (+ generated) images.

  The anchors' low-data protocol (DAGAN, FIGR, F2GAN): a C-way classifier trained on
  the K real images per class with standard augmentation (random shifts of up to
  ``eval.cnn_shift`` of the image size, per image), against the same plus generated
  images. ``eval.cnn_steps`` Adam(``eval.cnn_lr``) steps on batches of ``eval.cnn_batch``
  drawn uniformly from the pool; the initialisation and the batches depend on
  ``seed`` alone, so with and without generated images start alike.
  """
  ec = config.eval
  C, K = sup_CxK.shape[:2]
  xs, ys = [sup_CxK.reshape(C * K, *sup_CxK.shape[2:])], [np.repeat(np.arange(C), K)]
  if aug_CxN is not None:
    xs.append(aug_CxN.reshape(-1, *aug_CxN.shape[2:]))
    ys.append(np.repeat(np.arange(C), aug_CxN.shape[1]))
  x_all = jnp.asarray(np.concatenate(xs), jnp.float32)
  y_all = jnp.asarray(np.concatenate(ys))
  init, opt_init, train, predict, _ = _cnn_fns(
    C, int(ec.cnn_batch), float(ec.cnn_lr), float(ec.cnn_shift)
  )
  key = jax.random.key(int(seed))
  params = init(jax.random.fold_in(key, 0), x_all)
  # step i draws its batch and shifts from fold_in(fold_in(key, 1), i)
  params, _ = train(
    params, opt_init(params), x_all, y_all, int(ec.cnn_steps), jax.random.fold_in(key, 1)
  )
  H = held_CxH.shape[1]
  pred = np.asarray(
    predict(params, jnp.asarray(held_CxH.reshape(C * H, *held_CxH.shape[2:]), jnp.float32))
  )
  return (pred == np.repeat(np.arange(C), H)).reshape(C, H).mean(1)


def _ratio(a: float, b: float) -> float:
  """a / b, NaN when b is 0 (e.g. all features dead in an untrained feature net)."""
  return float(a) / float(b) if b > 0 else float("nan")


def score(config, f_gen, f_sup, f_held, images=None) -> tuple[dict, float]:
  """Per-class metrics ``{name: [C]}`` and the pooled FD of one set of generated features.

  Args:
    images: ``(generated, support, held-out, seed)`` images for the CNN low-data
      metric (``lowdata_cnn_acc``, seeded by ``seed``); without them, or with
      ``eval.cnn_steps = 0``, that metric is left out.
  """
  C, K = f_sup.shape[:2]
  protos = f_held.mean(1)
  per = {m: np.zeros(C) for m in METRICS if m != "lowdata_cnn_acc"}
  for c in range(C):
    per["kid"][c] = M.kid(f_gen[c], f_held[c])
    per["fidelity"][c] = M.nearest_prototype_accuracy(f_gen[c], np.full(len(f_gen[c]), c), protos)
    per["diversity"][c] = _ratio(
      M.mean_pairwise_distance(f_gen[c]), M.mean_pairwise_distance(f_held[c])
    )
    # nearest-neighbour distance to the K support images vs to K held-out images
    # (same reference-set size); < 1 means samples sit closer to what they saw.
    per["memorisation"][c] = _ratio(
      M.nearest_neighbour_distance(f_gen[c], f_sup[c]).mean(),
      M.nearest_neighbour_distance(f_gen[c], f_held[c][:K]).mean(),
    )
  per["lowdata_acc"] = lowdata_accuracy(config, f_sup, f_held, f_gen[:, : config.eval.n_aug])
  if images is not None and _cnn_on(config):
    gen, sup, held, seed = images
    per["lowdata_cnn_acc"] = lowdata_cnn_accuracy(
      config, sup, held, gen[:, : config.eval.n_aug], seed
    )
  fd = M.frechet_distance(f_gen.reshape(-1, f_gen.shape[-1]), f_held.reshape(-1, f_held.shape[-1]))
  return per, fd


def _cnn_on(config) -> bool:
  return int(config.eval.get("cnn_steps", 0) or 0) > 0


def real_scores(config, f_sup, f_held, images=None) -> tuple[dict, float]:
  """The ceiling: held-out real images of each class scored as if they were samples.

  The held-out images of a class split into two halves A and B; each half is
  scored against the other as reference (KID, diversity, memorisation,
  low-data accuracy with the half added to the K support images, tested on the
  other half; the CNN's too with ``images = (support, held-out, seed)``) and the two
  directions are averaged. Class fidelity is
  leave-one-out over all held-out images: an image's own class prototype
  excludes it. Pooled FD: all A halves against all B halves.
  """
  C, H, D = f_held.shape
  K = f_sup.shape[1]
  halves = (f_held[:, : H // 2], f_held[:, H // 2 :])
  protos = f_held.mean(1)
  per = {m: np.zeros(C) for m in METRICS if m != "lowdata_cnn_acc"}
  for c in range(C):
    a, b = halves[0][c], halves[1][c]
    per["kid"][c] = M.kid(a, b)
    per["diversity"][c] = np.mean(
      [_ratio(M.mean_pairwise_distance(x), M.mean_pairwise_distance(f_held[c])) for x in (a, b)]
    )
    per["memorisation"][c] = np.mean(
      [
        _ratio(
          M.nearest_neighbour_distance(x, f_sup[c]).mean(),
          M.nearest_neighbour_distance(x, y[:K]).mean(),
        )
        for x, y in ((a, b), (b, a))
      ]
    )
    hits = []
    for i in range(H):
      p = protos.copy()
      p[c] = (f_held[c].sum(0) - f_held[c, i]) / (H - 1)
      hits.append(M.nearest_prototype_accuracy(f_held[c, i : i + 1], [c], p))
    per["fidelity"][c] = np.mean(hits)
  per["lowdata_acc"] = 0.5 * (
    lowdata_accuracy(config, f_sup, halves[1], halves[0])
    + lowdata_accuracy(config, f_sup, halves[0], halves[1])
  )
  if images is not None and _cnn_on(config):
    sup, held, seed = images
    ha, hb = held[:, : H // 2], held[:, H // 2 :]
    per["lowdata_cnn_acc"] = 0.5 * (
      lowdata_cnn_accuracy(config, sup, hb, ha, seed)
      + lowdata_cnn_accuracy(config, sup, ha, hb, seed)
    )
  fd = M.frechet_distance(halves[0].reshape(-1, D), halves[1].reshape(-1, D))
  return per, fd


def evaluate(
  config,
  params_by_run: dict,
  features_fn,
  verbose: bool = True,
  keep_images: bool = True,
  rules: dict | None = None,
) -> dict:
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
      rows.extend(
        dict(
          method=method,
          meta_seed=mseed,
          adapt_seed=a,
          T=t,
          cls=c,
          **{m: float(per[m][c]) for m in METRICS if m in per},
        )
        for c in range(C)
      )
      fds.append(
        dict(
          method=method,
          meta_seed=mseed,
          adapt_seed=a,
          T=t,
          fd=fd,
          **({"feats": feats[1]} if feats is not None else {}),
        )
      )

  sup, held = tc["support"], tc["heldout"]
  real_only = {a: lowdata_accuracy(config, f_sup, f_held) for a in adapt_seeds}
  # the CNN's seed is the adaptation seed's: with and without generated images start alike
  cnn_real = (
    {a: lowdata_cnn_accuracy(config, sup, held, seed=a) for a in adapt_seeds}
    if _cnn_on(config)
    else {}
  )
  per, fd = real_scores(config, f_sup, f_held, images=(sup, held, adapt_seeds[0]))
  add("real", 0, adapt_seeds[0], per, fd)  # the same for every T and adaptation seed
  for a in adapt_seeds:
    copies = copy_baseline(sup, ec.n_gen, seed=a)
    per, fd = score(config, features_fn(copies), f_sup, f_held, images=(copies, sup, held, a))
    add("copy", 0, a, per, fd)  # the copy baseline does not depend on T
    if a == adapt_seeds[0] and keep_images:
      images["copy"] = {t: copy_baseline(tc["support"], ec.n_gen, seed=a) for t in steps}
  for (method, mseed), params in params_by_run.items():
    for a in adapt_seeds:
      t0 = time.perf_counter()
      # Runs of one meta seed share adaptation noise (paired), seeds differ.
      key = jax.random.fold_in(jax.random.key(10_000 + a), mseed)
      gen = adapt_and_generate(
        config, params, tc["support"], steps, key, ec.n_gen, rules.get((method, mseed))
      )
      for t in steps:
        f_gen = features_fn(gen[t])
        # the CNN is fitted at the headline T only: it costs more than every other metric
        per, fd = score(
          config, f_gen, f_sup, f_held, images=(gen[t], sup, held, a) if t == ec.headline else None
        )
        add(method, mseed, a, per, fd, feats=(t, f_gen))
      if (
        keep_images
        and mseed == min(s for (m, s) in params_by_run if m == method)
        and a == adapt_seeds[0]
      ):
        images[method] = gen
      if verbose:
        print(
          f"[eval] {method} meta seed {mseed} adapt seed {a}: {time.perf_counter() - t0:.1f}s",
          flush=True,
        )
  return {
    "per_class": rows,
    "fd": fds,
    "classes": tc["names"],
    "indices": tc["indices"],
    "support": tc["support"],
    "f_held": f_held,
    "images": images,
    "lowdata_real": {a: v.tolist() for a, v in real_only.items()},
    "lowdata_cnn_real": {a: v.tolist() for a, v in cnn_real.items()},
  }
