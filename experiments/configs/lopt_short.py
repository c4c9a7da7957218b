"""Learned optimiser vs tuned SGD and Adam on unseen Omniglot classes (~15 min on 2 CPU cores).

Run:
  python experiments/lopt_omniglot.py --config experiments/configs/lopt_short.py \
      --workdir runs/lopt_short
Override any field, e.g. --config.lopt.estimator=pes --config.lopt.steps=300.
"""

import ml_collections

from experiments.configs import omniglot_short


def lopt_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  # The learned-optimiser study keeps the benchmark pair and the SGD rule it was
  # run with (dcgan28, non-saturating loss, one D and one G update per step).
  c.model = "dcgan28"
  c.model_kw = ml_collections.ConfigDict()
  c.loss = "ns"
  c.blur = 0.0
  c.d_steps = 1
  c.g_steps = 1
  c.inner_opt = "sgd"
  c.inner_lr = 0.05
  c.pretrain.d_steps = 1
  c.lopt = ml_collections.ConfigDict()
  c.lopt.init = "random"  # the shared starting GAN: "random" (seeded) or "pretrained"
  c.lopt.seed = 0
  c.lopt.hidden = "32"  # MLP hidden sizes, comma-separated
  c.lopt.start_lr = 0.0  # SGD rate the optimisers start from; 0 = SGD's tuned rate
  c.lopt.step_mult = 1e-3  # scale of the MLP's per-coordinate step
  c.lopt.estimator = "tbptt"  # tbptt | es | pes
  c.lopt.sigma = 0.01  # es / pes
  c.lopt.num_pairs = 2  # es / pes
  c.lopt.steps = 150  # meta-steps
  c.lopt.tasks = 4  # inner runs in parallel
  c.lopt.k = 4  # support images (= eval.k)
  c.lopt.q = 8  # query images for the MMD meta-loss
  c.lopt.unroll = 10  # inner steps per truncation
  c.lopt.horizon = 50  # inner steps per run
  c.lopt.outer_lr = 1e-3
  c.lopt.log_every = 10
  c.lopt.n_val = 10  # validation-alphabet classes for tuning SGD / Adam
  c.lopt.sgd_lrs = "0.01,0.02,0.05,0.1,0.2"
  c.lopt.adam_lrs = "0.0001,0.0003,0.001,0.003,0.01"
  c.lopt.adam_b1 = 0.5
  return c


def get_config():
  c = omniglot_short.get_config()
  c.name = "lopt_short"
  c.methods = "transfer"
  c.eval.steps = "5,10,25,50"
  c.eval.headline = 10
  return lopt_fields(c)
