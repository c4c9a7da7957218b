"""The voices main job: 3 folds (test speakers george, lucas, theo), one meta seed each,
Reptile and transfer, on FSDD as 64 x 32 log-mel spectrograms.

Run (prints the table; writes eval/voices.png and eval/audio/*.wav):
  python experiments/voices.py --config experiments/configs/voices_short.py \
      --workdir runs/voices_short
or `make voices`. Resume a killed run with --resume; override any field, e.g.
--config.folds=0 --config.train.steps=50.
"""

from experiments.configs import common


def get_config():
  c = common.voices_config()
  c.name = "voices_short"
  c.folds = "0,2,4"  # the pilots read fold 0's validation speaker, jackson: no fold here tests him
  c.meta_seeds = "0"
  c.methods = "reptile,transfer"
  # 300 pre-training steps and 60 Reptile meta-steps per fold: what fits 15 minutes on 2 cores
  # (research log 34 piloted 400 and 80 on fold 0's validation speaker: 310 s per fold)
  c.pretrain.steps = 300
  c.train.steps = 60
  c.train.ckpt_every = 60
  c.train.sample_every = 60
  c.eval.steps = "10"  # the headline T only (each T is another adaptation and Griffin-Lim pass)
  return c
