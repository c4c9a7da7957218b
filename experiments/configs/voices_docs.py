"""The voices tutorial's run (docs/tutorials/new_voice.md): one fold, toy widths, a few hundred
training steps, so that the docs build trains it in about a minute on 2 CPU cores.

Run:
  python experiments/voices.py --config experiments/configs/voices_docs.py \
      --workdir /tmp/voices_docs --mode train
"""

from experiments.configs import voices_tiny


def get_config():
  c = voices_tiny.get_config()
  c.name = "voices_docs"
  c.pretrain.steps = 300
  c.pretrain.batch = 16
  c.train.steps = 20
  c.train.tasks = 2
  c.train.k = 4
  c.train.q = 4
  c.train.ckpt_every = 20
  c.train.sample_every = 20
  c.train.log_every = 10
  c.inner_steps = 3
  c.eval.headline = 3
  return c
