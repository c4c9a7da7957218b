"""Tiny config for tests: 3 pre-training steps, 2 meta-steps, T = 2 tasks, K = 2, 3 test classes.

The main job's recipe at toy widths (one critic step per inner step).

Run:
  python experiments/omniglot.py --config experiments/configs/tiny.py --workdir /tmp/tiny
"""

from experiments.configs import common


def get_config():
  c = common.base_config()
  c.name = "tiny"
  c.methods = "reptile,transfer,scratch"
  c.meta_seeds = "0"
  c.inner_steps = 1
  c.d_steps = 1  # one critic step per inner step: half the unrolled graph to compile
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
  c.features.steps = 20
  c.features.batch = 32
  c.features.dim = 16
  c.eval.num_classes = 3
  c.eval.k = 2
  c.eval.steps = "0,2"
  c.eval.headline = 2
  c.eval.adapt_seeds = "0"
  c.eval.n_gen = 8
  c.eval.n_aug = 4
  c.eval.classifier_steps = 10
  c.eval.cnn_steps = 3
  c.eval.n_boot = 50
  c.eval.grid_classes = 2
  c.eval.tune_lrs = "0.001,0.01"
  c.eval.tune_g_trainable = "all;mapping"
  c.eval.tune_psi = "1,0.5"
  c.eval.tune_classes = 3
  return c
