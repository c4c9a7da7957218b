"""Tiny learned-optimiser config for tests: a few meta-steps, 3 test classes.

Run:
  python experiments/lopt_omniglot.py --config experiments/configs/lopt_tiny.py --workdir /tmp/lopt
"""

from experiments.configs import lopt_short, tiny


def get_config():
  c = lopt_short.lopt_fields(tiny.get_config())
  c.name = "lopt_tiny"
  c.methods = "transfer"
  c.eval.steps = "1,2"
  c.eval.headline = 2
  c.lopt.hidden = "4"
  c.lopt.steps = 2
  c.lopt.tasks = 2
  c.lopt.k = 2
  c.lopt.q = 2
  c.lopt.unroll = 1
  c.lopt.horizon = 2
  c.lopt.log_every = 1
  c.lopt.n_val = 2
  c.lopt.sgd_lrs = "0.01,0.1"
  c.lopt.adam_lrs = "0.001"
  return c
