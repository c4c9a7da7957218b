"""Conditional pre-training pilot (issue 43): cfsgan28 trained DAGAN-style on meta-training
classes, then T = 0 samples drawn from validation classes' supports (no gradient step).

Run (pre-training only; a picture of validation supports and their samples):
  python experiments/cond_pilot.py --config experiments/configs/cond_pilot.py \
      --workdir runs/cond_pilot
Tiny variant for tests: --config.pretrain.steps=3 --config.pretrain.batch=4.
With D's class head (research log 33): --config.pretrain.class_weight=1
--config.model_kw.num_classes=3344.
"""

from experiments.configs import common


def get_config():
  c = common.base_config()
  c.name = "cond_pilot"
  c.model = "cfsgan28"
  c.methods = "transfer"
  c.meta_seeds = "0"
  c.pretrain.per_seed = False
  c.pretrain.steps = 1000
  c.pretrain.batch = 32  # classes per step, each a target and a set of cond_m images
  c.pretrain.cond_m = 3  # K - 1 at K = 4: the inner loop's leave-one-out sets
  c.pretrain.lr = 8e-4
  c.pretrain.recon_weight = 0.0
  c.pretrain.mode_seeking_weight = 0.0
  c.pretrain.mismatch_weight = 0.0  # GanTrainConfig.mismatch_weight: matching-aware D
  # GanTrainConfig.class_weight: D's class head over the pre-training classes; with it set
  # model_kw.num_classes to the train split's classes (3,344 with rotations; an error says so)
  c.pretrain.class_weight = 0.0
  c.model_kw.project = False  # D: a projection term through its own support encoder
  c.model_kw.num_classes = 0
  c.train.ckpt_every = 250
  c.train.sample_every = 250
  c.eval.k = 4
  c.eval.grid_classes = 8
  return c
