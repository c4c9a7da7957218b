"""Full Omniglot protocol: 3 seeds, each with its own pre-trained GAN; Reptile, FOMAML, MAML and
Meta-SGD (exact second order), the last two also at Reptile's meta-training time.

Run (about 3.9 h of compute on 2 AMD EPYC cores: training 10,326 s on a slow day, tuning and
evaluation 3,671 s; feature net cached; a GPU runs it unchanged):
  python experiments/omniglot.py --config experiments/configs/omniglot_full.py \
      --workdir runs/omniglot_full
Resume a killed run by adding --resume.
"""

from experiments.configs import common


def get_config():
  c = common.base_config()
  c.name = "omniglot_full"
  c.methods = "reptile,fomaml,maml,metasgd,transfer,scratch"
  c.train.equal_time = "maml,metasgd"   # rows maml@time, metasgd@time: Reptile's time per seed
  c.meta_seeds = "0,1,2"
  c.pretrain.per_seed = True
  c.pretrain.steps = 2000
  c.train.steps = 200              # the main job's meta-training; what differs is below
  c.train.tasks = 4
  c.train.outer_lr = 1e-3
  c.train.outer_b1 = 0.0
  c.train.ckpt_every = 250
  c.train.sample_every = 250
  c.eval.adapt_seeds = "0,1"
  c.eval.tune_lrs = "0.001,0.003"
  c.eval.tune_g_trainable = "all;mapping"
  c.eval.tune_d_trainable = "all;conv3,fc"  # FreezeD at test time (research log 14)
  c.eval.tune_psi = "1,0.8,0.6,0.4"         # truncation after adaptation (research log 22)
  return c
