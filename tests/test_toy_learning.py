"""Meta-learning helps where it must: held-out toy tasks adapt better from a meta-learned init."""

import functools

import jax
import numpy as np

import metagan_jax as mg


def test_meta_learned_init_adapts_better_than_random_init():
  family = mg.toy.RingMixtures()
  model = mg.models.mlp(data_dim=2, z_dim=4, hidden=(32, 32))
  config = mg.MetaConfig(
    mg.AdaptConfig(model, inner_steps=3, inner_lr=0.05), algorithm="maml", outer_lr=1e-3
  )

  @functools.partial(jax.jit, static_argnames="steps")
  def meta_train(seed, steps=150):
    # one program for the whole run: 150 dispatches of a tiny step (and of the task
    # sampler, op by op) cost more than the step itself
    def body(state, i):
      tasks, _ = family.sample_tasks(jax.random.fold_in(jax.random.key(seed + 100), i), 8, 16, 16)
      state, _ = mg.meta_step(
        state, tasks, jax.random.fold_in(jax.random.key(seed + 200), i), config
      )
      return state, None

    return jax.lax.scan(body, mg.init(jax.random.key(seed), config), np.arange(steps))[0]

  score = jax.jit(lambda p, k: mg.toy.adaptation_mmd(p, family, config.adapt, k, num_tasks=32))
  for seed in range(3):
    state = meta_train(seed)
    eval_key = jax.random.key(10_000 + seed)  # fresh tasks, never seen in training
    meta = np.asarray(score(state.params, eval_key))
    random = np.asarray(score(mg.init(jax.random.key(seed + 50), config).params, eval_key))
    diff = random - meta  # paired over the same 32 held-out tasks and noise
    t_stat = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    assert t_stat > 5, (seed, meta.mean(), random.mean(), t_stat)
    assert meta.mean() < 0.6 * random.mean(), (seed, meta.mean(), random.mean())
