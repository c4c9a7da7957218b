"""The main job: pre-train a GAN, meta-train Reptile from it (3 seeds), adapt to unseen classes.

Run (11.5 min on a 2-core Zen 4 AMD EPYC with the feature network cached, 12.3 fresh;
15.5 min fresh on a 2-core AVX2 AMD EPYC, 13.2 with its caches warm; prints the results table):
  python experiments/omniglot.py --config experiments/configs/omniglot_short.py \
      --workdir runs/omniglot_short
A second run with other seeds: --config.meta_seeds=10,11,12 (the pre-trained GAN is
seeded by the first). Resume a killed run by adding --resume. Override any field,
e.g. --config.train.steps=100.
With second-order MAML as well (and its row at Reptile's time, maml@time):
  --config.methods=reptile,maml,transfer
"""

from experiments.configs import common


def get_config():
  c = common.base_config()
  c.name = "omniglot_short"
  c.methods = "reptile,transfer"
  c.meta_seeds = "0,1,2"
  c.pretrain.per_seed = False  # one pre-trained GAN for the run, seeded by meta_seeds[0]
  c.pretrain.steps = 1000  # research log 17: 1,000 vs 1,500 on validation, 3 seed sets
  c.pretrain.lr = 8e-4  # research log 26: 1e-4 left the GAN far from converged
  c.train.steps = 200
  c.train.tasks = 4
  c.train.outer_lr = 1e-3  # on validation classes: better than 3e-4 (docs/research_log.md)
  c.train.outer_b1 = 0.0
  c.train.equal_time = "maml,metasgd"  # when --config.methods has them: rows at Reptile's time
  c.train.ckpt_every = 250
  c.train.sample_every = 250
  c.eval.steps = "0,5,10"  # T = 25 and 50: the full protocol
  c.eval.adapt_seeds = "0"
  c.eval.n_boot = 1000
  c.eval.tune_lrs = "0.001,0.003"  # every method picks its rate on validation classes
  c.eval.tune_g_trainable = "all"  # (the full protocol also tunes G: mapping only)
  c.eval.tune_d_trainable = "all;conv3,fc"  # FreezeD at test time (research log 14)
  c.eval.tune_psi = "1,0.8,0.6,0.4"  # truncation after adaptation (research log 22)
  return c
