"""Meta-gradients against finite differences and independent references (float64)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import metagan_jax as mg
from metagan_jax import GanParams
from tests.helpers import (
  central_difference,
  random_direction,
  tiny_model,
  tiny_tasks,
  to64,
  tree_allclose,
  tree_dot,
  tree_max_rel_err,
)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _config(algorithm="maml", inner_opt=None, **adapt_kw):
  adapt_kw.setdefault("inner_steps", 2)
  adapt_kw.setdefault("inner_lr", 0.1)
  return mg.MetaConfig(
    mg.AdaptConfig(tiny_model(), inner_opt=inner_opt, **adapt_kw), algorithm=algorithm
  )


def _problem(config, seed=0):
  params = to64(mg.init(jax.random.key(seed), config).params)
  tasks = tiny_tasks(jax.random.key(seed + 100))
  return params, tasks, jax.random.key(seed + 200)


def _single_task(tasks):
  return tasks.support[0], tasks.query[0]


def _check_fd(params, tasks, key, config, player_dirs, n_dirs=3, tol=1e-4):
  """Directional derivatives of each player's meta-loss vs central differences."""
  support, query = _single_task(tasks)
  (task_key,) = jax.random.split(key, 1)  # meta_gradients' key for task 0 of T=1
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
  objective = jax.jit(lambda p: mg.maml_objective(p, support, query, task_key, config)[0])
  for row, select in player_dirs:  # row 0: L_D, row 1: L_G
    for i in range(n_dirs):
      v = select(random_direction(jax.random.key(1000 + 10 * row + i), params))
      fd = central_difference(lambda p: objective(p)[row], params, v)
      an = tree_dot(grads, v)
      assert abs(fd - an) / abs(an) < tol, (row, i, float(fd), float(an))
  return grads


def _only(player):
  """Direction that is zero outside one player's parameters."""

  def select(v):
    zero = lambda t: jax.tree.map(jnp.zeros_like, t)
    if isinstance(v, mg.MetaSGDParams):
      return mg.MetaSGDParams(*(select(f) for f in v))
    return GanParams(g=v.g if player == "g" else zero(v.g), d=v.d if player == "d" else zero(v.d))

  return select


@pytest.mark.parametrize("inner_opt", [None, "adam"])
def test_maml_meta_gradient_matches_finite_differences(inner_opt):
  opt = optax.adam(0.05, eps_root=1e-12) if inner_opt == "adam" else None
  config = _config(inner_opt=opt)
  params, tasks, key = _problem(config)
  _check_fd(params, tasks, key, config, [(0, _only("d")), (1, _only("g"))])


def test_metasgd_learning_rate_gradients_match_finite_differences():
  config = _config("metasgd")
  params, tasks, key = _problem(config)
  lr_only = lambda player: (
    lambda v: mg.MetaSGDParams(init=jax.tree.map(jnp.zeros_like, v.init), lr=_only(player)(v.lr))
  )
  grads = _check_fd(params, tasks, key, config, [(0, lr_only("d")), (1, lr_only("g"))])
  # The learning rates really move under Meta-SGD.
  assert float(optax.tree.norm(grads.lr)) > 0


def test_metasgd_with_adam_direction_matches_finite_differences():
  direction = optax.scale_by_adam(b1=0.5, b2=0.9, eps_root=1e-12)
  config = _config("metasgd", inner_lr=0.05, metasgd_direction=direction)
  params, tasks, key = _problem(config)
  both = lambda player: (
    lambda v: mg.MetaSGDParams(init=_only(player)(v.init), lr=_only(player)(v.lr))
  )
  _check_fd(params, tasks, key, config, [(0, both("d")), (1, both("g"))])
  # With every rate at inner_lr it adapts exactly as Adam(inner_lr) does.
  support = tasks.support[0]
  got = mg.adapt(params, support, key, config.adapt)
  adam = dataclasses.replace(
    config.adapt, inner_opt=optax.chain(direction, optax.scale(-0.05)), metasgd_direction=None
  )
  want = mg.adapt(params.init, support, key, adam)
  assert tree_max_rel_err(got, want) < 1e-8  # rounding: -lr * u against scale(-lr)(u)


def _reference_adapt(params, support, key, config, first_order):
  """A plain, independent alternating-SGD inner loop (non-saturating loss)."""
  model, inner = config.adapt.model, config.adapt
  noise = mg.inner_noise(key, inner, support.shape[0], support.dtype)
  const = jax.lax.stop_gradient if first_order else (lambda t: t)
  g, d = params
  for i in range(inner.inner_steps):
    fake = model.generate(g, noise.z[i, 0])
    d_loss = lambda d_: (
      jnp.mean(jax.nn.softplus(-model.discriminate(d_, support)))
      + jnp.mean(jax.nn.softplus(model.discriminate(d_, fake)))
    )
    d = jax.tree.map(lambda p, gr: p - inner.inner_lr * const(gr), d, jax.grad(d_loss)(d))
    g_loss = lambda g_: jnp.mean(
      jax.nn.softplus(-model.discriminate(d, model.generate(g_, noise.z[i, 1])))
    )
    g = jax.tree.map(lambda p, gr: p - inner.inner_lr * const(gr), g, jax.grad(g_loss)(g))
  return GanParams(g, d)


def _reference_meta_gradient(params, support, query, task_key, config, first_order):
  model = config.adapt.model
  k_adapt, k_query = jax.random.split(task_key)
  z = model.sample_z(jax.random.split(k_query)[0], query.shape[0], query.dtype)

  def losses(p):
    a = _reference_adapt(p, support, k_adapt, config, first_order)
    fake = model.generate(a.g, z)
    l_d = jnp.mean(jax.nn.softplus(-model.discriminate(a.d, query))) + jnp.mean(
      jax.nn.softplus(model.discriminate(a.d, fake))
    )
    l_g = jnp.mean(jax.nn.softplus(-model.discriminate(a.d, fake)))
    return l_d, l_g

  # Partial derivatives by definition: the other player's meta-params fixed.
  gd = jax.grad(lambda d: losses(GanParams(params.g, d))[0])(params.d)
  gg = jax.grad(lambda g: losses(GanParams(g, params.d))[1])(params.g)
  return GanParams(gg, gd)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_meta_gradient_equals_independent_reference(algorithm):
  """maml == reference; fomaml == the same reference with stop_gradient on inner grads."""
  config = _config(algorithm)
  params, tasks, key = _problem(config)
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
  support, query = _single_task(tasks)
  (task_key,) = jax.random.split(key, 1)
  ref = jax.jit(
    functools.partial(_reference_meta_gradient, config=config, first_order=algorithm == "fomaml")
  )(params, support, query, task_key)
  assert tree_max_rel_err(grads, ref) < 1e-9


def _truncated_surrogate(params, support, query, task_key, config):
  """``[L_D, L_G](theta)`` whose gradient truncated second order computes, built by hand.

  The first ``S - n`` inner steps move ``theta`` by a displacement (and give the
  optimiser states) held at their values at ``params``; the last ``n`` steps and
  the query losses (non-saturating) are functions of ``theta``.
  """
  inner = config.inner
  model, S, n = inner.model, inner.inner_steps, inner.second_order_steps
  k_adapt, k_query = jax.random.split(task_key)
  noise = mg.inner_noise(k_adapt, inner, support.shape[0], support.dtype)
  d_opt, g_opt = inner.optimizers()
  step = functools.partial(
    mg.inner.inner_step, support=support, d_opt=d_opt, g_opt=g_opt, config=inner
  )
  c = (params.g, params.d, g_opt.init(params.g), d_opt.init(params.d))
  for i in range(S - n):
    c, _ = step(c, (noise.z[i], noise.gp_keys[i]))
  shift = GanParams(
    jax.tree.map(jnp.subtract, c[0], params.g), jax.tree.map(jnp.subtract, c[1], params.d)
  )
  z = model.sample_z(jax.random.split(k_query)[0], query.shape[0], query.dtype)

  def losses(p):
    carry = (jax.tree.map(jnp.add, p.g, shift.g), jax.tree.map(jnp.add, p.d, shift.d), c[2], c[3])
    for i in range(S - n, S):
      carry, _ = step(carry, (noise.z[i], noise.gp_keys[i]))
    g, d = carry[0], carry[1]
    fake = model.generate(g, z)
    l_d = jnp.mean(jax.nn.softplus(-model.discriminate(d, query))) + jnp.mean(
      jax.nn.softplus(model.discriminate(d, fake))
    )
    return jnp.stack([l_d, jnp.mean(jax.nn.softplus(-model.discriminate(d, fake)))])

  return losses


def test_truncated_second_order_matches_finite_differences_of_its_surrogate():
  # Adam inside: the first steps' optimiser state is held fixed too (SGD: the next test)
  config = _config(inner_opt=optax.adam(0.05, eps_root=1e-12), inner_steps=3, second_order_steps=1)
  params, tasks, key = _problem(config)
  support, query = _single_task(tasks)
  (task_key,) = jax.random.split(key, 1)
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
  surrogate = jax.jit(_truncated_surrogate(params, support, query, task_key, config))
  # The surrogate is the real meta-objective at params (only its derivative differs).
  exact = jax.jit(functools.partial(mg.maml_objective, config=config))(
    params, support, query, task_key
  )[0]
  assert float(jnp.max(jnp.abs(surrogate(params) - exact))) < 1e-12
  for row, player in ((0, "d"), (1, "g")):
    for i in range(3):
      v = _only(player)(random_direction(jax.random.key(1000 + 10 * row + i), params))
      fd = central_difference(lambda p: surrogate(p)[row], params, v)
      an = tree_dot(grads, v)
      assert abs(fd - an) / abs(an) < 1e-4, (row, i, float(fd), float(an))


def test_truncated_second_order_spans_first_order_to_exact():
  params, tasks, key = _problem(_config(inner_steps=3))
  grads = lambda algorithm, **kw: jax.jit(
    functools.partial(mg.meta_gradients, config=_config(algorithm, inner_steps=3, **kw))
  )(params, tasks, key)[0]
  exact, first = grads("maml"), grads("fomaml")
  assert tree_max_rel_err(grads("maml", second_order_steps=3), exact) < 1e-12
  assert tree_max_rel_err(grads("maml", second_order_steps=0), first) < 1e-12
  one = grads("maml", second_order_steps=1)
  assert tree_max_rel_err(one, exact) > 1e-4 and tree_max_rel_err(one, first) > 1e-4
  # Meta-SGD's learning rates still get a meta-gradient through the last step.
  sgd_params = to64(mg.init(jax.random.key(0), _config("metasgd", inner_steps=3)).params)
  lr = jax.jit(
    functools.partial(
      mg.meta_gradients, config=_config("metasgd", inner_steps=3, second_order_steps=1)
    )
  )(sgd_params, tasks, key)[0].lr
  assert float(optax.tree.norm(lr)) > 0
  with pytest.raises(ValueError, match="second_order_steps"):
    _config(inner_steps=3, second_order_steps=4)


def test_fomaml_differs_from_maml():
  params, tasks, key = _problem(_config())
  grads = lambda c: jax.jit(functools.partial(mg.meta_gradients, config=c))(params, tasks, key)[0]
  g2, g1 = grads(_config("maml")), grads(_config("fomaml"))
  assert tree_max_rel_err(g1, g2) > 1e-3


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_vmap_over_tasks_equals_python_loop(algorithm):
  config = _config(algorithm)
  params = to64(mg.init(jax.random.key(0), config).params)
  tasks = tiny_tasks(jax.random.key(1), t=3)
  key = jax.random.key(2)
  grads, aux = mg.meta_gradients(params, tasks, key, config)
  one_task = jax.jit(functools.partial(mg.per_task_gradient, config=config))  # a Python loop
  per_task = [
    one_task(params, tasks.support[i], tasks.query[i], k)
    for i, k in enumerate(jax.random.split(key, 3))
  ]
  loop = jax.tree.map(lambda *g: sum(g) / 3, *[p[0] for p in per_task])
  assert tree_max_rel_err(grads, loop) < 1e-6
  tree_allclose(aux["query_losses"], jnp.stack([p[1] for p in per_task]), rtol=1e-10)
  # Sequential evaluation inside the compiled step gives the same numbers.
  seq, _ = mg.meta_gradients(params, tasks, key, dataclasses.replace(config, vectorize="map"))
  assert tree_max_rel_err(seq, grads) < 1e-10


def test_reptile_with_outer_sgd_equals_formula():
  beta = 0.3
  config = dataclasses.replace(_config("reptile"), outer_opt=optax.sgd(beta))
  state = mg.init(jax.random.key(0), config)
  state = state.replace(
    params=to64(state.params), opt_state=config.optimizer.init(to64(state.params))
  )
  tasks = tiny_tasks(jax.random.key(1), t=4)
  key = jax.random.key(2)
  new_state, _ = jax.jit(functools.partial(mg.meta_step, config=config))(state, tasks, key)
  theta = state.params
  adapt = jax.jit(functools.partial(mg.adapt, config=config.adapt))
  adapted = [
    adapt(theta, tasks.support[i], jax.random.split(k)[0])
    for i, k in enumerate(jax.random.split(key, 4))
  ]
  mean_adapted = jax.tree.map(lambda *a: sum(a) / 4, *adapted)
  expected = jax.tree.map(lambda t, m: t + beta * (m - t), theta, mean_adapted)
  assert tree_max_rel_err(new_state.params, expected) < 1e-12
  assert int(new_state.step) == 1


def test_metasgd_outer_applies_its_own_rule_to_the_rates():
  a, b = 0.3, 1e-3
  config = dataclasses.replace(
    _config("metasgd"), outer_opt=mg.metasgd_outer(optax.sgd(a), optax.sgd(b))
  )
  params, tasks, key = _problem(config)
  state = mg.MetaState(params, config.optimizer.init(params), jnp.zeros((), jnp.int32))
  new_state, _ = jax.jit(functools.partial(mg.meta_step, config=config))(state, tasks, key)
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
  expected = mg.MetaSGDParams(
    init=jax.tree.map(lambda p, g: p - a * g, params.init, grads.init),
    lr=jax.tree.map(lambda p, g: p - b * g, params.lr, grads.lr),
  )
  assert tree_max_rel_err(new_state.params, expected) < 1e-12
  assert tree_max_rel_err(new_state.params.lr, params.lr) > 0  # the rates did move
  with pytest.raises(TypeError, match="MetaSGDParams"):
    mg.metasgd_outer(optax.sgd(a), optax.sgd(b)).init(params.init)


def test_adapt_with_adam_and_several_d_steps_equals_reference():
  """Library adapt with Adam, 2 D steps, 1 G step vs a hand-written loop; scan == unroll == remat."""
  model = tiny_model()
  opt = optax.adam(0.05, eps_root=1e-12)
  base = mg.AdaptConfig(model, inner_steps=3, d_steps=2, g_steps=1, inner_opt=opt)
  params = to64(model.init(jax.random.key(0)))
  support = tiny_tasks(jax.random.key(1)).support[0]
  key = jax.random.key(3)
  noise = mg.inner_noise(key, base, support.shape[0], support.dtype)

  @jax.jit  # the hand-written loop as one program (op by op it compiles every primitive)
  def reference(g, d):
    gs, ds = opt.init(g), opt.init(d)
    for i in range(3):
      for j in range(2):
        fake = model.generate(g, noise.z[i, j])
        gr = jax.grad(
          lambda d_: mg.losses.ns_d_loss(
            model.discriminate(d_, support), model.discriminate(d_, fake)
          )
        )(d)
        u, ds = opt.update(gr, ds, d)
        d = optax.apply_updates(d, u)
      gr = jax.grad(
        lambda g_: mg.losses.ns_g_loss(model.discriminate(d, model.generate(g_, noise.z[i, 2])))
      )(g)
      u, gs = opt.update(gr, gs, g)
      g = optax.apply_updates(g, u)
    return GanParams(g, d)

  ref = reference(*params)
  adapt = lambda c: jax.jit(functools.partial(mg.adapt, config=c))(params, support, key)
  for kw in [dict(), dict(unroll=True), dict(remat=True), dict(unroll=True, remat=True)]:
    out = adapt(dataclasses.replace(base, **kw))
    assert tree_max_rel_err(out, ref) < 1e-10, kw
  # adapt_prefix: the first T steps of a longer adaptation, T traced, one program for every T
  longer = dataclasses.replace(base, inner_steps=5)
  prefix = jax.jit(lambda p, s, k, t: mg.adapt_prefix(p, s, k, longer, t))
  assert tree_max_rel_err(prefix(params, support, key, 3), ref) < 1e-10
  two = adapt(dataclasses.replace(base, inner_steps=2))
  assert tree_max_rel_err(prefix(params, support, key, 2), two) < 1e-10
  assert prefix._cache_size() == 1  # pylint: disable=protected-access
  assert tree_max_rel_err(mg.adapt_prefix(params, support, key, longer, 0), params) == 0
  with pytest.raises(ValueError, match="steps=6 must lie in"):
    mg.adapt_prefix(params, support, key, longer, 6)


@pytest.mark.parametrize("loss", ["ns", "wasserstein", "ns-r1"])
def test_n_fake_a_multiple_of_k_with_repeated_latents_equals_one_copy(loss):
  """n_fake = 3K with every latent repeated 3 times: the update of n_fake = K (real repeated)."""
  model = tiny_model()
  ac = mg.AdaptConfig(
    model,
    inner_steps=1,
    d_steps=2,
    g_steps=1,
    loss=loss,
    inner_opt=optax.adam(0.05, eps_root=1e-12),
  )
  params = to64(model.init(jax.random.key(0)))
  support = tiny_tasks(jax.random.key(1)).support[0]
  noise = mg.inner_noise(jax.random.key(3), ac, support.shape[0], support.dtype)
  d_opt, g_opt = ac.optimizers()
  step = functools.partial(
    mg.inner.inner_step, support=support, d_opt=d_opt, g_opt=g_opt, config=ac
  )
  carry = (params.g, params.d, g_opt.init(params.g), d_opt.init(params.d))
  one, l_one = step(carry, (noise.z[0], noise.gp_keys[0]))
  three, l_three = step(carry, (jnp.tile(noise.z[0], (1, 3, 1)), noise.gp_keys[0]))
  assert tree_max_rel_err(three[:2], one[:2]) < 1e-10
  assert jnp.allclose(jnp.stack(l_three), jnp.stack(l_one), rtol=1e-10)


def test_wgan_gp_adapts_with_n_fake_a_multiple_of_k_and_rejects_others():
  model = tiny_model()
  params = to64(model.init(jax.random.key(0)))
  support = tiny_tasks(jax.random.key(1)).support[0]
  k = support.shape[0]
  base = mg.AdaptConfig(model, inner_steps=2, inner_lr=0.05, loss="wgan-gp")
  out_k = mg.adapt(params, support, jax.random.key(3), base)
  out_3k = mg.adapt(params, support, jax.random.key(3), dataclasses.replace(base, n_fake=3 * k))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out_3k))
  assert tree_max_rel_err(out_3k, out_k) > 1e-6  # more samples: another update
  # the penalty's pairs: generated sample i with support image i mod K
  tiled = mg.inner._tiled(support, 3 * k)  # pylint: disable=protected-access
  assert tiled.shape == (3 * k,) + support.shape[1:]
  assert bool(jnp.all(tiled == jnp.concatenate([support] * 3)))
  assert mg.inner._tiled(support, k + 1) is support  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="multiple of the support size"):
    mg.adapt(params, support, jax.random.key(3), dataclasses.replace(base, n_fake=k + 1))


def test_scan_unroll_and_remat_give_identical_meta_gradients():
  config = _config()
  params, tasks, key = _problem(config)
  grads = lambda c: jax.jit(functools.partial(mg.meta_gradients, config=c))(params, tasks, key)
  ref, _ = grads(config)
  for kw in [dict(unroll=True), dict(remat=True)]:
    cfg = dataclasses.replace(config, adapt=dataclasses.replace(config.adapt, **kw))
    out, _ = grads(cfg)
    assert tree_max_rel_err(out, ref) < 1e-10, kw


@pytest.mark.parametrize("algorithm", mg.ALGORITHMS)
def test_same_key_same_result_different_key_different_result(algorithm):
  config = _config(algorithm)
  state = mg.init(jax.random.key(0), config)
  tasks = tiny_tasks(jax.random.key(1), t=2, dtype=jnp.float32)
  step = jax.jit(functools.partial(mg.meta_step, config=config))
  a, ma = step(state, tasks, jax.random.key(5))
  b, mb = step(state, tasks, jax.random.key(5))
  c, _ = step(state, tasks, jax.random.key(6))
  for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb))):
    assert jnp.array_equal(x, y)
  assert tree_max_rel_err(c.params, a.params) > 0
  # And init is deterministic in its key.
  assert tree_max_rel_err(mg.init(jax.random.key(0), config).params, state.params) == 0
  assert tree_max_rel_err(mg.init(jax.random.key(1), config).params, state.params) > 0
