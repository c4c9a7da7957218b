"""Bring your own model: flax NNX pairs and pure-function pairs through every algorithm.

The same parameters give the same meta-step as the equal built-in linen pair; second-order
meta-gradients match float64 finite differences for both players; bad players fail early.
"""

import functools

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import metagan_jax as mg
from metagan_jax import GanParams
from tests.helpers import (
  central_difference,
  random_direction,
  tiny_model,
  tiny_tasks,
  to64,
  tree_dot,
  tree_max_rel_err,
)

Z, X, H = 3, 2, 8  # tests.helpers.tiny_model(): mlp(data_dim=2, z_dim=3, hidden=(8,), tanh)


class NnxMLP(nnx.Module):
  """The linen ``models.MLP`` with one hidden tanh layer, written in NNX (same parameter names)."""

  def __init__(self, din, dout, rngs, squeeze=False):
    self.fc0 = nnx.Linear(din, H, rngs=rngs)
    self.fc1 = nnx.Linear(H, dout, rngs=rngs)
    self.squeeze = squeeze

  def __call__(self, x):
    h = self.fc1(jnp.tanh(self.fc0(x)))
    return h[:, 0] if self.squeeze else h


def nnx_model():
  return mg.GanModel.from_nnx(
    NnxMLP(Z, X, nnx.Rngs(0)), NnxMLP(X, 1, nnx.Rngs(1), squeeze=True), z_dim=Z, data_shape=(X,)
  )


def _dense_init(key, din, dout):
  return {"kernel": 0.5 * jax.random.normal(key, (din, dout)), "bias": jnp.zeros((dout,))}


def _mlp_init(din, dout):
  def init(key):
    k0, k1 = jax.random.split(key)
    return {"fc0": _dense_init(k0, din, H), "fc1": _dense_init(k1, H, dout)}

  return init


def _mlp_apply(p, x):
  h = jnp.tanh(x @ p["fc0"]["kernel"] + p["fc0"]["bias"])
  return h @ p["fc1"]["kernel"] + p["fc1"]["bias"]


def functions_model():
  return mg.GanModel.from_functions(
    g_init=_mlp_init(Z, X),
    g_apply=_mlp_apply,
    d_init=_mlp_init(X, 1),
    d_apply=lambda p, x: _mlp_apply(p, x)[:, 0],
    z_dim=Z,
    data_shape=(X,),
  )


MODELS = {"nnx": nnx_model, "functions": functions_model}


def _config(model, algorithm="maml", **kw):
  kw.setdefault("inner_steps", 2)
  kw.setdefault("inner_lr", 0.1)
  return mg.MetaConfig(mg.AdaptConfig(model, **kw), algorithm=algorithm)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_parameters_are_plain_nested_dicts(kind):
  params = MODELS[kind]().init(jax.random.key(0))
  for tree in params:
    assert type(tree) is dict and all(type(v) is dict for v in tree.values())
    assert sorted(tree) == ["fc0", "fc1"] and sorted(tree["fc0"]) == ["bias", "kernel"]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_second_order_meta_gradient_matches_finite_differences(kind):
  with jax.enable_x64(True):
    config = _config(MODELS[kind]())
    params = to64(mg.init(jax.random.key(0), config).params)
    tasks = tiny_tasks(jax.random.key(100))
    key = jax.random.key(200)
    (task_key,) = jax.random.split(key, 1)  # meta_gradients' key for task 0 of T=1
    grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
    objective = jax.jit(
      lambda p: mg.maml_objective(p, tasks.support[0], tasks.query[0], task_key, config)[0]
    )
    zero = lambda t: jax.tree.map(jnp.zeros_like, t)
    for row, player in ((0, "d"), (1, "g")):  # row 0: L_D (D's own), row 1: L_G (G's own)
      for i in range(2):
        v = random_direction(jax.random.key(1000 + 10 * row + i), params)
        v = GanParams(g=v.g if player == "g" else zero(v.g), d=v.d if player == "d" else zero(v.d))
        fd = central_difference(lambda p, row=row: objective(p)[row], params, v)
        an = tree_dot(grads, v)
        assert abs(fd - an) / abs(an) < 1e-4, (kind, player, i, float(fd), float(an))


@pytest.mark.parametrize(
  "kind,algorithm",
  [("nnx", "maml"), ("functions", "maml"), ("nnx", "reptile"), ("functions", "fomaml")],
)
def test_meta_step_equals_the_linen_pair_with_the_same_parameters(kind, algorithm):
  linen, own = _config(tiny_model(), algorithm), _config(MODELS[kind](), algorithm)
  state = mg.init(jax.random.key(0), linen)
  tasks = tiny_tasks(jax.random.key(1), t=2, dtype=jnp.float32)
  step = lambda c: jax.jit(functools.partial(mg.meta_step, config=c))
  want, m_want = step(linen)(state, tasks, jax.random.key(2))
  got, m_got = step(own)(state, tasks, jax.random.key(2))
  assert tree_max_rel_err(got.params, want.params) < 1e-5
  for k in m_want:
    np.testing.assert_allclose(m_got[k], m_want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  adapt = lambda c: jax.jit(functools.partial(mg.adapt, config=c.adapt))
  adapted_want = adapt(linen)(want.params, tasks.support[0], jax.random.key(3))
  adapted_got = adapt(own)(got.params, tasks.support[0], jax.random.key(3))
  assert tree_max_rel_err(adapted_got, adapted_want) < 1e-5


def test_linen_pair_through_the_function_path_is_identical():
  # The built-in linen path and the same modules wrapped as pure functions: bitwise equal.
  old = tiny_model()
  z0, x0 = jnp.zeros((1, Z)), jnp.zeros((1, X))
  new = mg.GanModel.from_functions(
    g_init=lambda k: old.generator.init(k, z0)["params"],
    g_apply=lambda p, z: old.generator.apply({"params": p}, z),
    d_init=lambda k: old.discriminator.init(k, x0)["params"],
    d_apply=lambda p, x: old.discriminator.apply({"params": p}, x),
    z_dim=Z,
    data_shape=(X,),
  )
  tasks = tiny_tasks(jax.random.key(1), t=2, dtype=jnp.float32)
  for algorithm in ("maml", "reptile", "metasgd"):
    c_old, c_new = _config(old, algorithm), _config(new, algorithm)
    s_old, s_new = mg.init(jax.random.key(0), c_old), mg.init(jax.random.key(0), c_new)
    for a, b in zip(jax.tree.leaves(s_old), jax.tree.leaves(s_new)):
      np.testing.assert_array_equal(a, b)
    # One compiled program per path (op by op, this test took 38 s): the same HLO either way.
    s_old, m_old = jax.jit(functools.partial(mg.meta_step, config=c_old))(
      s_old, tasks, jax.random.key(2)
    )
    s_new, m_new = jax.jit(functools.partial(mg.meta_step, config=c_new))(
      s_new, tasks, jax.random.key(2)
    )
    for a, b in zip(jax.tree.leaves((s_old, m_old)), jax.tree.leaves((s_new, m_new))):
      np.testing.assert_array_equal(a, b, err_msg=algorithm)


def test_from_linen_is_the_builtin_pair():
  old = tiny_model()
  new = mg.GanModel.from_linen(old.generator, old.discriminator, z_dim=Z, data_shape=(X,))
  p = old.init(jax.random.key(0))
  q = new.init(jax.random.key(0))
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
    np.testing.assert_array_equal(a, b)
  z = jax.random.normal(jax.random.key(1), (5, Z))
  np.testing.assert_array_equal(old.generate(p.g, z), new.generate(q.g, z))


def test_nnx_factory_draws_parameters_from_the_key():
  model = mg.GanModel.from_nnx(
    lambda rngs: NnxMLP(Z, X, rngs),
    lambda rngs: NnxMLP(X, 1, rngs, squeeze=True),
    z_dim=Z,
    data_shape=(X,),
  )
  a, b, a2 = (model.init(jax.random.key(s)) for s in (0, 1, 0))
  assert not np.allclose(a.g["fc0"]["kernel"], b.g["fc0"]["kernel"])
  np.testing.assert_array_equal(a.g["fc0"]["kernel"], a2.g["fc0"]["kernel"])


def test_trainable_paths_and_metasgd_work_on_nnx_parameters():
  config = _config(nnx_model(), "metasgd", g_trainable="fc1", d_trainable="fc1")
  state = mg.init(jax.random.key(0), config)
  tasks = tiny_tasks(jax.random.key(1), t=2, dtype=jnp.float32)
  adapted = jax.jit(functools.partial(mg.adapt, config=config.adapt))(
    state.params, tasks.support[0], jax.random.key(2)
  )
  np.testing.assert_array_equal(adapted.g["fc0"]["kernel"], state.params.init.g["fc0"]["kernel"])
  assert not np.allclose(adapted.g["fc1"]["kernel"], state.params.init.g["fc1"]["kernel"])
  state, _ = jax.jit(functools.partial(mg.meta_step, config=config))(
    state, tasks, jax.random.key(3)
  )
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_nnx_meta_state_checkpoint_round_trip(tmp_path):
  config = _config(nnx_model(), "metasgd")
  state = mg.init(jax.random.key(0), config)
  state, _ = jax.jit(functools.partial(mg.meta_step, config=config))(
    state, tiny_tasks(jax.random.key(1), t=2, dtype=jnp.float32), jax.random.key(2)
  )
  mg.checkpoint.save(tmp_path / "ckpt", state)
  with pytest.raises(FileExistsError, match="force=True"):
    mg.checkpoint.save(tmp_path / "ckpt", state)
  restored = mg.checkpoint.restore(tmp_path / "ckpt", like=mg.init(jax.random.key(9), config))
  assert type(restored) is type(state)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)


class _Compiles:
  """Counts XLA backend compiles (jax.monitoring events) while active."""

  def __enter__(self):
    self.n, self.on = 0, True

    def listen(name, _secs, **_):
      if self.on and name.endswith("backend_compile_duration"):
        self.n += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    return self

  def __exit__(self, *exc):
    self.on = False


class BatchNormG(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.Linear(Z, X, rngs=rngs)
    self.bn = nnx.BatchNorm(X, rngs=rngs)

  def __call__(self, z):
    return self.bn(self.fc(z))


def _from_nnx(g, d, data_shape=(X,)):
  # The user's modules are built (and their initialisers run) outside the check.
  return lambda: mg.GanModel.from_nnx(g, d, z_dim=Z, data_shape=data_shape)


@pytest.mark.parametrize(
  "build,match",
  [
    (
      lambda: _from_nnx(BatchNormG(nnx.Rngs(0)), NnxMLP(X, 1, nnx.Rngs(1), True)),
      r"generator \(BatchNormG\) holds variables other than nnx.Param: bn/mean \(BatchStat\).*"
      r"stateless normalisation",
    ),
    (
      lambda: _from_nnx(NnxMLP(Z, X, nnx.Rngs(0)), NnxMLP(X, 1, nnx.Rngs(1), True), (4,)),
      r"generator maps z of shape \(2, 3\) to \(2, 2\), but data_shape=\(4,\) needs \(2, 4\)",
    ),
    (
      lambda: _from_nnx(NnxMLP(Z, X, nnx.Rngs(0)), NnxMLP(X, 1, nnx.Rngs(1))),
      r"discriminator maps x of shape \(2, 2\) to \(2, 1\); it must return one logit per sample",
    ),
    (
      lambda: (
        lambda: mg.GanModel.from_functions(
          g_init=_mlp_init(Z, X),
          g_apply=lambda p, z: _mlp_apply(p, z).reshape(-1),
          d_init=_mlp_init(X, 1),
          d_apply=lambda p, x: _mlp_apply(p, x)[:, 0],
          z_dim=Z,
          data_shape=(X,),
        )
      ),
      r"GanModel 'functions': the generator maps z of shape \(2, 3\) to \(4,\)",
    ),
  ],
  ids=["batchnorm", "generator-shape", "discriminator-shape", "functions-generator-shape"],
)
def test_bad_players_fail_before_any_compile(build, match):
  call = build()
  with _Compiles() as compiles, pytest.raises(ValueError, match=match):
    call()
  assert compiles.n == 0


def test_bad_arguments_name_the_fix():
  with pytest.raises(TypeError, match="GanModel.from_linen"):
    mg.GanModel.from_nnx(tiny_model().generator, None, z_dim=Z, data_shape=(X,))
  with pytest.raises(TypeError, match="g_apply must be a function"):
    mg.GanModel.from_functions(
      g_init=_mlp_init(Z, X), g_apply=None, d_init=_mlp_init(X, 1), d_apply=_mlp_apply,
      z_dim=Z, data_shape=(X,),
    )  # fmt: skip
  with pytest.raises(ValueError, match="data_shape"):
    mg.GanModel.from_nnx(
      NnxMLP(Z, X, nnx.Rngs(0)), NnxMLP(X, 1, nnx.Rngs(1)), z_dim=Z, data_shape=()
    )


def test_the_compile_counter_sees_a_compile():
  # So that `compiles.n == 0` above can fail.
  with _Compiles() as compiles:
    jax.jit(lambda x: x * 3.25 + 0.5)(jnp.arange(7.0))
  assert compiles.n >= 1


def test_trainable_paths_name_fields_of_dataclass_pytrees():
  # equinox modules and flax.struct dataclasses key their leaves by attribute (GetAttrKey).
  import flax.struct

  @flax.struct.dataclass
  class Dense:
    w: jax.Array
    b: jax.Array

  params = {
    "fc": Dense(w=jnp.ones((2, 2)), b=jnp.zeros(2)),
    "out": Dense(jnp.ones(2), jnp.zeros(1)),
  }
  mask = mg.trainable_mask(params, "fc/w,out")
  assert mask == {"fc": Dense(w=True, b=False), "out": Dense(w=True, b=True)}
  with pytest.raises(ValueError, match=r"prefix 'fc/x' matches no parameter.*'fc/w'"):
    mg.trainable_mask(params, "fc/x")
