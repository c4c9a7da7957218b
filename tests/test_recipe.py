"""The few-shot recipe's pieces: trainable masks, the GAN training step, pre-training that learns."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metagan_jax as mg
from experiments import train_lib
from experiments.configs import tiny
from metagan_jax import gan
from metagan_jax import metrics as M
from tests.helpers import SLOW

SMALL = dict(g_width=16, d_width=8, w_dim=16)


def _leaves(tree, prefix):
  return [
    x
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if "/".join(str(k.key) for k in p).startswith(prefix)
  ]


def _adapt(params, support, key, config):
  """mg.adapt, jitted (op by op it takes tens of seconds on CPU)."""
  return jax.jit(lambda p, s, k: mg.adapt(p, s, k, config))(params, support, key)


def test_trainable_mask_freezes_what_it_names_and_meta_gradients_still_reach_it():
  model = mg.models.fsgan28(**SMALL)
  params = jax.jit(model.init)(jax.random.key(0))
  support = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), minval=-1, maxval=1)
  ac = mg.AdaptConfig(
    model, inner_steps=2, inner_lr=0.1, loss="ns", g_trainable="mapping", d_trainable="none"
  )
  out = _adapt(params, support, jax.random.key(2), ac)
  for a, b in zip(jax.tree.leaves(out.d), jax.tree.leaves(params.d)):
    np.testing.assert_array_equal(a, b)  # D frozen
  for a, b in zip(_leaves(out.g, "synthesis"), _leaves(params.g, "synthesis")):
    np.testing.assert_array_equal(a, b)  # G's synthesis frozen
  assert all(
    not np.array_equal(a, b)
    for a, b in zip(_leaves(out.g, "mapping"), _leaves(params.g, "mapping"))
  )
  # Second-order MAML: the synthesis, frozen in the inner loop, still gets a
  # meta-gradient (it draws every adapted sample the meta-losses score).
  cfg = mg.MetaConfig(dataclasses.replace(ac, d_trainable=None), algorithm="maml")
  tasks = mg.Tasks(support[None], support[None])
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=cfg))(
    params, tasks, jax.random.key(3)
  )
  assert all(float(jnp.abs(g).max()) > 0 for g in _leaves(grads.g, "synthesis"))


def test_default_mask_changes_nothing():
  model = mg.models.fsgan28(**SMALL)
  params = jax.jit(model.init)(jax.random.key(0))
  support = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), minval=-1, maxval=1)
  a = _adapt(params, support, jax.random.key(2), mg.AdaptConfig(model, inner_steps=2))
  b = _adapt(
    params,
    support,
    jax.random.key(2),
    mg.AdaptConfig(model, inner_steps=2, g_trainable="mapping,synthesis", d_trainable="all"),
  )
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_gan_train_step_is_pure_and_the_ema_warms_up():
  model = mg.models.fsgan28(**SMALL)
  cfg = gan.GanTrainConfig(
    model, loss="wgan-gp", d_steps=2, ema=0.999, d_opt=optax.adam(1e-3), g_opt=optax.adam(1e-3)
  )
  state = jax.jit(functools.partial(gan.init, config=cfg))(jax.random.key(0))
  real = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1), minval=-1, maxval=1)
  step = jax.jit(functools.partial(gan.train_step, config=cfg))
  s1, m1 = step(state, real, jax.random.key(2))
  s1b, _ = step(state, real, jax.random.key(2))
  s2, _ = step(state, real, jax.random.key(3))
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s1b)):
    np.testing.assert_array_equal(a, b)  # same key, same state
  assert any(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params))
  )
  assert int(s1.step) == 1 and set(m1) == {"d_loss", "g_loss", "d_fake"}
  # Step 0's decay is min(0.999, 1 / 10): the EMA is 0.1 old + 0.9 new.
  for e, g0, g1 in zip(
    jax.tree.leaves(s1.ema_g), jax.tree.leaves(state.params.g), jax.tree.leaves(s1.params.g)
  ):
    np.testing.assert_allclose(e, 0.1 * g0 + 0.9 * g1, rtol=1e-5, atol=1e-6)


def _pooled(x):
  """7x7 average-pooled pixels: a cheap, fixed feature space for KID."""
  x = np.asarray(x).reshape(len(x), 7, 4, 7, 4)
  return x.mean((2, 4)).reshape(len(x), -1)


@SLOW
def test_pretrained_gan_beats_its_random_init_on_kid(tmp_path):
  """The tiny config's pre-training, run longer, draws closer to real characters than its init.

  A learning curve (``make test-all``); the pre-training step itself is checked by the
  kill/resume and pure-step tests of the default suite.
  """
  c = tiny.get_config()
  # 100 steps: trained KID at most 0.77x the init's in all 8 comparisons (0.91x at 60 steps)
  c.pretrain.steps, c.pretrain.batch = 100, 32
  c.train.ckpt_every = c.train.sample_every = c.train.log_every = 100
  split = train_lib.load_split(c, "train", verbose=False)
  val = np.concatenate(train_lib.load_split(c, "val", verbose=False).images)
  model = train_lib.get_model(c)
  diffs = []
  for s in range(2):  # two pre-training seeds x four subsets: p >= 2 / 2^8 = 0.008
    state = train_lib.train_run(c, "pretrain", s, str(tmp_path / f"s{s}"), split, progress=False)
    z = model.sample_z(jax.random.key(100 + s), 1024)
    trained = _pooled(model.generate(train_lib.pretrained_params(state).g, z))
    init = _pooled(model.generate(model.init(jax.random.split(jax.random.key(s))[0]).g, z))
    rng = np.random.default_rng(s)
    for part in range(4):  # four disjoint sample / reference subsets per seed
      ref = val[rng.choice(len(val), 256, replace=False)]
      sl = slice(256 * part, 256 * (part + 1))
      diffs.append(M.kid(trained[sl], _pooled(ref)) - M.kid(init[sl], _pooled(ref)))
  test = M.paired_test(np.array(diffs), np.zeros(len(diffs)))
  assert all(d < 0 for d in diffs), diffs
  assert test["p"] < 0.01, test
