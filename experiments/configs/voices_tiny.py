"""Tiny voices config for tests: one fold, 3 pre-training steps, 2 meta-steps, toy widths.

Run:
  python experiments/voices.py --config experiments/configs/voices_tiny.py --workdir /tmp/vt
"""

from experiments.configs import common


def get_config():
  c = common.voices_config()
  c.name = "voices_tiny"
  c.folds = "0"
  c.meta_seeds = "0"
  c.methods = "reptile,transfer"
  c.inner_steps = 1
  c.d_steps = 1
  c.model_kw.g_width = 16
  c.model_kw.d_width = 8
  c.model_kw.w_dim = 16
  c.pretrain.steps = 3
  c.pretrain.batch = 8
  c.train.steps = 2
  c.train.tasks = 2
  c.train.k = 2
  c.train.q = 2
  c.train.ckpt_every = 1
  c.train.log_every = 1
  c.train.sample_every = 2
  c.oracles.steps = 20
  c.oracles.clips_per_class = 3  # of recordings 0-24 to train on, and of 25-49 to report on
  c.oracles.gl_iters = 4
  c.eval.steps = "0,2"
  c.eval.headline = 2
  c.eval.n_gen = 4
  c.eval.n_boot = 50
  c.eval.tune_lrs = "0.001,0.01"
  c.eval.tune_classes = 3
  return c
