"""Full Omniglot protocol: 3 seeds, each with its own pre-trained GAN; Reptile, FOMAML, MAML and
Meta-SGD (exact second order), the last two also at Reptile's meta-training time.

Run (1.9 h on a 2-core Zen 4 AMD EPYC, feature net cached: training 4,407 s, tuning and
evaluation 2,327 s; about 3.9 h on an AVX2 AMD EPYC with the previous 2,000-step pre-training;
a GPU runs it unchanged):
  python experiments/omniglot.py --config experiments/configs/omniglot_full.py \
      --workdir runs/omniglot_full
Resume a killed run by adding --resume.
"""

from experiments.configs import common, omniglot_short


def get_config():
  c = common.base_config()
  c.name = "omniglot_full"
  c.methods = "reptile,fomaml,maml,metasgd,transfer,scratch"
  c.train.equal_time = "maml,metasgd"  # rows maml@time, metasgd@time: Reptile's time per seed
  c.meta_seeds = "0,1,2"
  c.pretrain.per_seed = True
  # The main job's pre-training, as validated there (research logs 17 and 26: 1,000 steps at
  # Adam 8e-4; this protocol pre-trained 2,000 steps at 1e-4 before).
  main_job = omniglot_short.get_config().pretrain
  c.pretrain.steps, c.pretrain.lr = main_job.steps, main_job.lr
  c.train.steps = 200  # the main job's meta-training; what differs is below
  c.train.tasks = 4
  c.train.outer_lr = 1e-3
  c.train.outer_b1 = 0.0
  c.train.ckpt_every = 250
  c.train.sample_every = 250
  c.eval.adapt_seeds = "0,1"
  c.eval.tune_lrs = "0.001,0.003"
  c.eval.tune_g_trainable = "all;mapping"
  c.eval.tune_d_trainable = "all;conv3,fc"  # FreezeD at test time (research log 14)
  c.eval.tune_psi = "1,0.8,0.6,0.4"  # truncation after adaptation (research log 22)
  return c
