"""The voices protocol in full: all 6 folds (every FSDD speaker tested once), 3 meta seeds,
Reptile, second-order MAML (through the last 2 inner steps) and transfer.

Its numbers are the ones the voices targets are judged on (docs/results/voices.md).
Run:
  python experiments/voices.py --config experiments/configs/voices_full.py \
      --workdir runs/voices_full
"""

from experiments.configs import common


def get_config():
  c = common.voices_config()
  c.name = "voices_full"
  c.folds = "0,1,2,3,4,5"
  c.meta_seeds = "0,1,2"
  c.methods = "reptile,maml,transfer"
  c.second_order_steps = "2"
  c.pretrain.steps = 300  # the main job's recipe (voices_short.py), so the two rank alike
  c.train.steps = 60
  c.train.ckpt_every = 20  # resumable across sittings
  c.train.sample_every = 60
  c.eval.steps = "0,5,10"
  return c
