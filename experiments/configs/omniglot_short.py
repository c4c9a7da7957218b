"""Short Omniglot run: every method, 1 meta seed x 1 adaptation seed (~15 min on 2 CPU cores).

Run:
  python experiments/omniglot.py --config experiments/configs/omniglot_short.py \
      --workdir runs/omniglot_short
Resume a killed run by adding --resume. Override any field, e.g. --config.train.steps=100.
"""

from experiments.configs import common


def get_config():
  c = common.base_config()
  c.name = "omniglot_short"
  c.meta_seeds = "0"
  c.inner_steps = 3
  c.train.steps = 300
  c.train.tasks = 4
  c.train.ckpt_every = 100
  c.train.sample_every = 150
  c.eval.adapt_seeds = "0"
  c.eval.n_boot = 1000
  return c
