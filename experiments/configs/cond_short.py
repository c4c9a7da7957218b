"""Conditional meta-learning (issue 43): Reptile over G, D and the support encoder of
``cfsgan28``, from the conditional pre-training of ``cond_pilot.py`` (research log 30's
recipe l: the matching-aware critic, 3,000 steps).

Meta-train only (the DAGAN protocol and the validation scores run on the finished folder):
  python experiments/omniglot.py --config experiments/configs/cond_short.py \
      --workdir runs/cond_short_s0 --mode=train
A pre-training already made by ``cond_pilot.py`` is reused by copying its ``pretrain/``
folder to ``<workdir>/train/pretrain_s<seed>`` and adding ``--resume``. The second
pre-training seed: ``--config.meta_seeds=1``.
Tiny variant for tests: ``--config.pretrain.steps=3 --config.train.steps=2``.
"""

from experiments.configs import cond_pilot, omniglot_short


def get_config():
  c = omniglot_short.get_config()
  pilot = cond_pilot.get_config()
  c.name = "cond_short"
  c.model = "cfsgan28"
  c.model_kw = pilot.model_kw
  c.methods = "reptile,transfer"
  c.meta_seeds = "0"  # one meta seed per pre-training seed: a folder each
  c.pretrain = pilot.pretrain
  c.pretrain.steps = 3000  # research log 30, runs l and m
  c.pretrain.mismatch_weight = 1.0
  c.train.equal_time = ""
  return c
