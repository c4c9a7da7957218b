"""The voices main job: 3 folds (test speakers george, jackson, lucas), one meta seed each,
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
  c.folds = "0,1,2"
  c.meta_seeds = "0"
  c.methods = "reptile,transfer"
  return c
