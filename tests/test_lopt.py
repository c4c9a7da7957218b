"""Learned optimisers: the optax transformation, its meta-gradient, and the ES/PES estimators."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metagan_jax as mg
from metagan_jax import lopt_train as LT
from tests.helpers import (
  central_difference,
  random_direction,
  tiny_model,
  tiny_tasks,
  to64,
  tree_dot,
)


def _random_lopt(key, hidden=(8,), lr=0.1, scale=0.5):
  """Learned-optimiser weights with a non-zero last layer (so the MLP matters)."""
  p = mg.init_lopt_params(key, hidden, lr)
  (w, b) = p.layers[-1]
  k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
  last = (scale * jax.random.normal(k1, w.shape), scale * jax.random.normal(k2, b.shape))
  return p._replace(layers=p.layers[:-1] + (last,))


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# --- the transformation ---------------------------------------------------------------


def test_update_is_pure_and_shape_preserving():
  params = tiny_model().init(jax.random.key(0))
  grads = random_direction(jax.random.key(1), params)
  lopt = _random_lopt(jax.random.key(2))
  opt = mg.learned_optimizer(lopt)
  state = opt.init(params)
  assert isinstance(state, mg.LOptState)
  copies = jax.tree.map(np.array, (grads, state, params))
  u1, s1 = opt.update(grads, state, params)
  u2, s2 = jax.jit(opt.update)(grads, state, params)
  u3, _ = opt.update(grads, state, params)
  assert _leaves_equal(copies, jax.tree.map(np.array, (grads, state, params)))  # inputs untouched
  assert _leaves_equal(u1, u3)  # same inputs, same outputs
  assert jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-5, atol=1e-7), u1, u2))
  assert jax.tree.structure(u1) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(u1), jax.tree.leaves(params)):
    assert u.shape == p.shape and u.dtype == p.dtype
  assert int(s1.count) == 1 and jax.tree.structure(s1) == jax.tree.structure(s2)
  sgd = optax.sgd(float(lopt.lr))
  sgd_u, _ = sgd.update(grads, sgd.init(params))
  assert not _leaves_equal(u1, sgd_u)  # a non-zero MLP changes the update


def test_zero_last_layer_reproduces_sgd_exactly():
  model = tiny_model()
  params = model.init(jax.random.key(0))
  lopt = mg.init_lopt_params(jax.random.key(3), hidden=(16, 16), lr=0.07)
  lr = float(lopt.lr)  # exp(log(0.07)): 0.07 up to the last bit
  assert abs(lr - 0.07) < 1e-8
  opt, sgd = mg.learned_optimizer(lopt), optax.sgd(lr)
  s_l, s_s, p_l, p_s = opt.init(params), sgd.init(params), params, params
  l_update, s_update = jax.jit(opt.update), jax.jit(sgd.update)
  for i in range(4):
    g = random_direction(jax.random.key(10 + i), params)
    u_l, s_l = l_update(g, s_l, p_l)
    u_s, s_s = s_update(g, s_s, p_s)
    assert _leaves_equal(u_l, u_s)
    p_l, p_s = optax.apply_updates(p_l, u_l), optax.apply_updates(p_s, u_s)
  # ... and inside adapt, for both players, against the configured SGD: bit for bit
  # when unrolled; in a lax.scan XLA fuses the two loop bodies differently, which
  # moves some gradients by an ulp.
  support = tiny_tasks(jax.random.key(4), dtype=jnp.float32).support[0]
  meta = mg.LOptMetaParams(params, lopt, None)
  for unroll in (True, False):
    config = mg.AdaptConfig(model, inner_steps=3, inner_lr=lr, unroll=unroll)
    adapt = jax.jit(functools.partial(mg.adapt, config=config))
    ref = adapt(params, support, jax.random.key(5))
    got = adapt(meta, support, jax.random.key(5))
    if unroll:
      assert _leaves_equal(ref, got)
    else:
      assert all(
        np.allclose(a, b, rtol=1e-6, atol=1e-8)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got))
      )


def test_spec_mismatch_and_missing_params_are_named():
  lopt = mg.init_lopt_params(jax.random.key(0))
  with pytest.raises(ValueError, match="features"):
    mg.learned_optimizer(lopt, mg.LOptSpec(decays=(0.9,)))
  opt = mg.learned_optimizer(lopt)
  params = tiny_model().init(jax.random.key(0))
  with pytest.raises(ValueError, match="needs params"):
    opt.update(params, opt.init(params))


# --- meta-gradients ----------------------------------------------------------------------


def _train_config(**kw):
  kw.setdefault("horizon", 4)
  kw.setdefault("unroll", 2)
  return LT.LOptTrainConfig(mg.AdaptConfig(tiny_model(), inner_lr=0.1), **kw)


@pytest.mark.parametrize("starts_run", [True, False])
def test_truncated_meta_gradient_matches_finite_differences(starts_run):
  with jax.enable_x64(True):
    config = _train_config(train_init=True)
    model = config.adapt.model
    meta = to64(
      mg.LOptMetaParams(
        model.init(jax.random.key(0)),
        _random_lopt(jax.random.key(1)),
        _random_lopt(jax.random.key(2)),
      )
    )
    tasks = tiny_tasks(jax.random.key(3), t=1, k=5, q=6)
    fresh = mg.Tasks(tasks.support[0], tasks.query[0])
    run = LT._fresh_run(meta, fresh.support, fresh.query, 0, config)  # pylint: disable=protected-access
    if not starts_run:  # a run in the middle: two steps in, on another task
      other = tiny_tasks(jax.random.key(4), t=1, k=5, q=6)
      _, run = LT.unroll_run(
        meta, run, mg.Tasks(other.support[0], other.query[0]), jax.random.key(5), config
      )
    else:
      run = run._replace(t=jnp.asarray(config.horizon, jnp.int32))  # restarts on ``fresh``
    f = jax.jit(lambda m: LT.unroll_run(m, run, fresh, jax.random.key(6), config)[0])
    grad = jax.jit(jax.grad(f))(meta)
    assert float(optax.tree.norm(grad.d)) > 0 and float(optax.tree.norm(grad.g)) > 0
    init_norm = float(optax.tree.norm(grad.init))
    assert (init_norm > 0) if starts_run else (init_norm == 0)  # truncation cuts the init
    for i in range(3):
      v = random_direction(jax.random.key(100 + i), meta)
      # Adam-style features (g / rms(g)) make the loss steep along the init near
      # zero gradients: a small step keeps the central difference in its smooth region.
      fd, an = central_difference(f, meta, v, eps=1e-8), tree_dot(grad, v)
      assert abs(fd - an) <= 1e-5 * abs(an) + 1e-9, (i, float(fd), float(an))


def test_meta_step_uses_the_estimate_and_restarts_runs():
  tasks = tiny_tasks(jax.random.key(0), t=2, k=5, q=6, dtype=jnp.float32)
  config = _train_config()
  init = jax.jit(functools.partial(LT.init, config=config))
  state = init(jax.random.key(1), tasks)
  assert np.asarray(state.runs.t).tolist() == [0, 2]  # staggered
  step = jax.jit(functools.partial(LT.meta_step, config=config))
  ts = []
  for i in range(3):
    state, metrics = step(
      state, tiny_tasks(jax.random.key(10 + i), t=2, k=5, q=6, dtype=jnp.float32), jax.random.key(i)
    )
    ts.append(np.asarray(state.runs.t).tolist())
    assert np.isfinite(float(metrics["meta_loss"]))
  assert ts == [[2, 4], [4, 2], [2, 4]]  # a run at the horizon restarts from step 0
  assert _leaves_equal(state.params.init, init(jax.random.key(1), tasks).params.init)


def test_bad_train_config_is_named():
  with pytest.raises(ValueError, match="multiple of unroll"):
    _train_config(horizon=5, unroll=2)
  with pytest.raises(ValueError, match="tbptt"):
    _train_config(estimator="es", train_init=True)
  with pytest.raises(ValueError, match="'sgd'"):
    _train_config(estimator="sgd")


# --- ES and PES: unbiased on quadratics ---------------------------------------------------


def _zscores(samples_NxD, truth_D):
  """Per-coordinate z-scores of the sample mean against the truth."""
  mean = samples_NxD.mean(0)
  se = samples_NxD.std(0, ddof=1) / np.sqrt(len(samples_NxD))
  return (mean - truth_D) / se


def test_es_is_unbiased_on_a_quadratic():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 5))
    a, c = jnp.asarray(m @ m.T + np.eye(5)), jnp.asarray(rng.normal(size=5))
    theta = {"x": jnp.asarray(rng.normal(size=5))}
    loss = lambda th: 0.5 * (th["x"] - c) @ a @ (th["x"] - c)
    truth = np.asarray(a @ (theta["x"] - c))
    est = jax.jit(jax.vmap(lambda k: LT.es_gradient(loss, theta, k, 0.1, 1)[0]["x"]))
    samples = np.asarray(est(jax.random.split(jax.random.key(1), 20_000)))
    z = _zscores(samples, truth)
    assert np.all(np.abs(z) < 4.5), z
    assert np.allclose(samples.mean(0), truth, rtol=0.1, atol=0.1 * np.abs(truth).max())


def _linear_system(horizon, unroll):
  """s <- A s + θ; loss = sum over steps of |s - c|²; one truncation = ``unroll`` steps."""
  A = jnp.asarray([[0.9, 0.2], [-0.1, 0.8]])
  c = jnp.asarray([1.0, -0.5])

  def unroll_fn(theta, state):
    s = state
    total = 0.0
    for _ in range(unroll):
      s = A @ s + theta
      total = total + jnp.sum((s - c) ** 2)
    return total, s

  def whole_run(theta):
    s, total = jnp.zeros(2), 0.0
    for _ in range(horizon // unroll):
      l, s = unroll_fn(theta, s)
      total = total + l
    return total

  return unroll_fn, whole_run


def test_pes_is_unbiased_for_the_whole_run_where_truncation_is_biased():
  with jax.enable_x64(True):
    horizon, unroll, pairs, sigma = 6, 2, 20_000, 0.05
    unroll_fn, whole_run = _linear_system(horizon, unroll)
    theta = jnp.asarray([0.3, -0.2])
    truth = np.asarray(jax.grad(whole_run)(theta))

    def chain(key):  # one antithetic pair through one whole run, gradient summed
      states, acc, total = jnp.zeros((1, 2, 2)), jnp.zeros((1, 2)), jnp.zeros(2)
      for k in range(horizon // unroll):
        g, _, states, acc = LT.pes_gradient(
          unroll_fn, theta, states, acc, jnp.full((1,), k == 0), jax.random.fold_in(key, k), sigma
        )
        total = total + g
      return total

    samples = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(8), pairs)))
    z = _zscores(samples, truth)
    assert np.all(np.abs(z) < 4.5), (z, samples.mean(0), truth)

    # Truncated backprop on the same system is biased (so the check above has teeth).
    def tbptt(theta):
      s, g = jnp.zeros(2), jnp.zeros(2)
      for _ in range(horizon // unroll):
        gk, s = jax.grad(unroll_fn, has_aux=True)(theta, jax.lax.stop_gradient(s))
        g = g + gk
      return g

    assert np.max(np.abs(np.asarray(tbptt(theta)) - truth)) > 0.2 * np.max(np.abs(truth))

    # Without the accumulated perturbations (plain truncated ES) the same check fails.
    def es_chain(key):
      s, total = jnp.zeros(2), jnp.zeros(2)
      for k in range(horizon // unroll):
        g, _ = LT.es_gradient(
          lambda th: unroll_fn(th, s)[0], theta, jax.random.fold_in(key, k), sigma, 1
        )
        total, s = total + g, unroll_fn(theta, s)[1]
      return total

    es = np.asarray(jax.jit(jax.vmap(es_chain))(jax.random.split(jax.random.key(9), pairs)))
    assert np.max(np.abs(_zscores(es, truth))) > 10


def test_meta_training_improves_on_its_starting_sgd():
  """Ring-mixture tasks: after 60 TBPTT meta-steps the optimiser beats its SGD start."""
  model = mg.models.mlp(data_dim=2, z_dim=3, hidden=(16,))
  ring = mg.toy.RingMixtures()
  tasks = lambda k, t: ring.sample_tasks(k, t, 16, 16)[0]
  config = LT.LOptTrainConfig(
    mg.AdaptConfig(model, inner_lr=0.05), horizon=8, unroll=4, outer_lr=3e-3
  )
  state = LT.init(jax.random.key(0), tasks(jax.random.key(1), 8), config, hidden=(16,))
  start = state.params
  step = jax.jit(functools.partial(LT.meta_step, config=config))
  for i in range(60):
    state, _ = step(state, tasks(jax.random.key(100 + i), 8), jax.random.key(i))
  whole = LT.LOptTrainConfig(config.adapt, horizon=8, unroll=8)  # one whole run per task

  def run_loss(meta, s, q, k):
    run = LT._fresh_run(meta, s, q, whole.horizon, whole)  # pylint: disable=protected-access
    return LT.unroll_run(meta, run, mg.Tasks(s, q), k, whole)[0]

  held = tasks(jax.random.key(999), 64)
  keys = jax.random.split(jax.random.key(5), 64)
  ev = jax.jit(jax.vmap(run_loss, in_axes=(None, 0, 0, 0)))
  diff = np.asarray(ev(state.params, held.support, held.query, keys)) - np.asarray(
    ev(start, held.support, held.query, keys)
  )
  t = diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))
  assert t < -4, (diff.mean(), t)


def test_pes_pair_restarts_together_when_one_particle_diverges():
  tasks = tiny_tasks(jax.random.key(0), t=1, k=5, q=6, dtype=jnp.float32)
  config = _train_config(estimator="pes", num_pairs=2)
  state = LT.init(jax.random.key(1), tasks, config)
  meta_step = jax.jit(functools.partial(LT.meta_step, config=config))
  state, _ = meta_step(state, tasks, jax.random.key(2))  # every run at t = 2
  # Particle 1 (pair 0, sign -) diverges; pair 1 stays mid-run.
  nan_one = lambda x: x.at[0, 1].set(jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x
  runs = state.runs._replace(params=jax.tree.map(nan_one, state.runs.params))
  state = state.replace(runs=runs)
  state, metrics = meta_step(state, tasks, jax.random.key(3))
  assert np.asarray(state.runs.t).tolist() == [[2, 2, 4, 4]]  # pair 0 restarted, both signs
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.runs.params))
  assert float(metrics["diverged"]) == 0.0 and np.isfinite(float(metrics["meta_loss"]))
