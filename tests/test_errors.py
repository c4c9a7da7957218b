"""Bad input raises a clear error at construction or trace time, before any compute."""

import functools

import jax
import jax.numpy as jnp
import pytest

import metagan_jax as mg

MODEL = mg.models.mlp(data_dim=2, z_dim=3, hidden=(8,))


def _step(tasks, algorithm="maml"):
  config = mg.MetaConfig(mg.AdaptConfig(MODEL, inner_steps=1), algorithm=algorithm)
  state = mg.init(jax.random.key(0), config)
  return jax.jit(functools.partial(mg.meta_step, config=config))(state, tasks, jax.random.key(1))


def _tasks(support_shape=(2, 4, 2), query_shape=(2, 3, 2), dtype=jnp.float32):
  return mg.Tasks(jnp.zeros(support_shape, dtype), jnp.zeros(query_shape, dtype))


CASES = [
    ("inner_steps=0", lambda: mg.AdaptConfig(MODEL, inner_steps=0), ValueError, "inner_steps must be an integer >= 1, got 0"),
    ("inner_steps=2.5", lambda: mg.AdaptConfig(MODEL, inner_steps=2.5), ValueError, "inner_steps"),
    ("d_steps=0", lambda: mg.AdaptConfig(MODEL, d_steps=0), ValueError, "d_steps"),
    ("n_fake=0", lambda: mg.AdaptConfig(MODEL, n_fake=0), ValueError, "n_fake"),
    ("unknown loss", lambda: mg.AdaptConfig(MODEL, loss="lsgan"), ValueError, "Unknown GAN loss 'lsgan'"),
    ("unknown loss kind", lambda: mg.GanLoss(kind="mse"), ValueError, "Unknown GAN loss kind 'mse'"),
    ("negative penalty", lambda: mg.GanLoss(gp_weight=-1.0), ValueError, "gp_weight=-1.0"),
    ("unknown algorithm", lambda: mg.MetaConfig(mg.AdaptConfig(MODEL), algorithm="maml2"), ValueError, "Unknown algorithm 'maml2'"),
    ("unknown vectorize", lambda: mg.MetaConfig(mg.AdaptConfig(MODEL), vectorize="pmap"), ValueError, "vectorize"),
    ("model not a GanModel", lambda: mg.AdaptConfig("dcgan28"), TypeError, "GanModel"),
    ("unknown model", lambda: mg.get_model("resnet"), ValueError, "Unknown model 'resnet'"),
    ("unknown norm", lambda: mg.models.dcgan32(norm="batch"), ValueError, "BatchNorm is not offered"),
    ("unknown fsgan28 norm", lambda: mg.models.fsgan28(g_norm="batch"), ValueError, "BatchNorm is not offered"),
    ("trainable prefix matches nothing", lambda: mg.AdaptConfig(mg.models.fsgan28(), g_trainable="maping"), ValueError, "prefix 'maping' matches no parameter; top-level names are ['mapping', 'synthesis']"),
    ("gan d_steps=0", lambda: mg.gan.GanTrainConfig(mg.models.fsgan28(), d_steps=0), ValueError, "d_steps must be an integer >= 1, got 0"),
    ("gan ema=1", lambda: mg.gan.GanTrainConfig(mg.models.fsgan28(), ema=1.0), ValueError, "ema must be in [0, 1)"),
    ("blur sigma < 0", lambda: mg.data.blur(jnp.zeros((1, 4, 4, 1)), -1.0), mg.data.DataError, "blur sigma must be >= 0"),
    ("integer data", lambda: _step(_tasks(dtype=jnp.int32)), TypeError, "must be floating point"),
    ("support of wrong sample shape", lambda: _step(_tasks(support_shape=(2, 4, 3))), ValueError, "tasks.support[0] has shape (4, 3)"),
    ("query of wrong sample shape", lambda: _step(_tasks(query_shape=(2, 3, 5))), ValueError, "tasks.query[0] has shape (3, 5)"),
    ("support/query task counts differ", lambda: _step(_tasks(query_shape=(3, 3, 2))), ValueError, "support has 2 tasks but tasks.query has 3"),
    ("missing task axis", lambda: _step(mg.Tasks(jnp.zeros((2,)), jnp.zeros((2,)))), ValueError, "must be [T, N, 2]"),
    ("tasks not a Tasks", lambda: _step((jnp.zeros((2, 4, 2)), jnp.zeros((2, 3, 2)))), TypeError, "metagan_jax.Tasks"),
    ("empty support", lambda: mg.adapt(MODEL.init(jax.random.key(0)), jnp.zeros((0, 2)), jax.random.key(0), mg.AdaptConfig(MODEL)), ValueError, "[N >= 1, 2]"),
    ("adapt integer support", lambda: mg.adapt(MODEL.init(jax.random.key(0)), jnp.zeros((4, 2), jnp.uint8), jax.random.key(0), mg.AdaptConfig(MODEL)), TypeError, "dtype uint8"),
    ("meta_step with learned-optimiser params", lambda: mg.meta_gradients(mg.LOptMetaParams(MODEL.init(jax.random.key(0)), mg.init_lopt_params(jax.random.key(0))), mg.Tasks(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4, 2))), jax.random.key(0), mg.MetaConfig(mg.AdaptConfig(MODEL))), TypeError, "use metagan_jax.lopt_train.meta_step"),
    ("adapt wrong params", lambda: mg.adapt({"g": 1}, jnp.zeros((4, 2)), jax.random.key(0), mg.AdaptConfig(MODEL)), TypeError, "GanParams, MetaSGDParams or LOptMetaParams, got dict"),
]


@pytest.mark.parametrize("make,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(make, exc, match):
  with pytest.raises(exc) as info:
    make()
  assert match in str(info.value)


def test_errors_come_before_compute(monkeypatch):
  """A shape error must surface while tracing, before XLA compiles anything."""
  calls = []
  monkeypatch.setattr(mg.meta, "adapt_with_aux", lambda *a, **k: calls.append(1))
  with pytest.raises(ValueError):
    _step(_tasks(support_shape=(2, 4, 3)))
  assert not calls
