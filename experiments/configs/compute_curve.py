r"""The compute curve: does sample value grow with compute? Pre-train and meta-train at 1x, 3x
and 10x a recipe's steps; score every point on validation classes (experiments/compute_curve.py).

One recipe per command; ``:<recipe>`` picks it (``get_config``'s argument):
  python experiments/compute_curve.py --config experiments/configs/compute_curve.py:uncond \
      --workdir runs/compute_curve_uncond
  python experiments/compute_curve.py --config experiments/configs/compute_curve.py:cond \
      --workdir runs/compute_curve_cond
Resume a killed run, at any stage, with the same command plus ``--resume`` (finished stages
and points are skipped; on another CPU type only the stages not yet finished run there, and
``stages.json`` records each sitting's CPU). ``--mode=train`` trains every point without
scoring; a later call with ``--resume`` scores them.

Recipes (the 1x point; the scales multiply both step counts):
- ``uncond``: the main job (``omniglot_short.py``): 1,000 pre-training steps of batch 64 at
  Adam 8e-4, then Reptile, 200 meta-steps x 4 tasks x 10 inner steps. At 1x, 3x, 10x: one
  pre-training of 10,000 steps (its checkpoints at 1,000, 3,000 and 10,000 start the points)
  and Reptile runs of 200, 600 and 2,000 meta-steps (2,800 in all). Estimated from the main
  job's step times on a 2-core Zen 4 AMD EPYC (0.21-0.24 s per pre-training step, 0.41-0.48 s
  per meta-step; research log 26), not measured: pre-training ~40 min, Reptile ~22 min,
  scoring (tuning and validation scores ~2 min per point, the augmentation protocol ~7 min per
  point and ~5 min for its arms without samples) ~30 min: ~1.5 h.
- ``cond``: the committed conditional recipe: ``cond_pilot.py``'s pre-training of
  ``cfsgan28`` with the matching-aware critic, 3,000 steps (research log 30's recipe l), then
  ``cond_short.py``'s Reptile over G, D and the support encoder (200 meta-steps). At 1x, 3x,
  10x: one pre-training of 30,000 steps (checkpoints at 3,000, 9,000 and 30,000) and Reptile
  runs of 200, 600 and 2,000 meta-steps. Estimated from the same CPU (3,000 pre-training steps
  in 7.7-9.0 min, 0.61-0.68 s per meta-step; research logs 30 and 32): pre-training ~80-90
  min, Reptile ~30 min, scoring at T = 0 and T = 10 ~45 min: ~2.5-3 h.
- ``uncond_accel``, ``cond_accel``: the accelerator variant of each, for one GPU: the same
  recipe with 16 tasks per meta-step instead of 4 (the tasks run side by side on the device)
  and the augmentation protocol adapting all 100 classes at once. Its time is unmeasured until
  a GPU runs it.
- ``tiny``: the tests' toy (``tiny.py``'s widths; 2 pre-training steps and 2 meta-steps at
  1x, scales 1 and 3).

Every recipe: one meta seed (``meta_seeds = "0"``) and so one pre-training seed; the points
are scored with ``config.methods`` (``reptile``; add ``transfer`` to score the pre-trained GAN
of each point alone). The results go to ``curve.results_dir`` and ``curve.figures_dir``
(``experiments/results/compute_curve_<recipe>.json`` and
``experiments/figures/compute_curve_<recipe>.png``; ``""``: the workdir only). Any field can
be overridden, e.g. ``--config.curve.scales=1,3,10,30``.
"""

import ml_collections

from experiments.configs import cond_short, omniglot_short, tiny
from experiments.configs import dagan as dagan_cfg

RECIPES = ("uncond", "cond", "uncond_accel", "cond_accel", "tiny")

#: What the accelerator variant changes, and its time (stated on the results page).
ACCELERATOR = {
  "configs": "compute_curve.py:uncond_accel, compute_curve.py:cond_accel",
  "changes": "train.tasks = 16 (4 on CPU); dagan.max_classes = 100 (25 on CPU)",
  "time": "unmeasured until a GPU runs it",
}


def get_config(recipe: str = "uncond") -> ml_collections.ConfigDict:
  """The compute curve of one recipe (:data:`RECIPES`)."""
  recipe = str(recipe).strip()
  if recipe not in RECIPES:
    raise ValueError(
      f"compute_curve.py:{recipe!r} is not a recipe; write "
      f"--config experiments/configs/compute_curve.py:<recipe> with one of {list(RECIPES)}."
    )
  base = recipe.removesuffix("_accel")
  if base == "uncond":
    c = omniglot_short.get_config()
  elif base == "cond":
    c = cond_short.get_config()
  else:
    c = tiny.get_config()
  c.name = f"compute_curve_{recipe}"
  c.methods = "reptile"  # trained and scored at every point
  c.meta_seeds = "0"  # one meta seed, so one pre-training seed (pretrain.per_seed is False)
  c.pretrain.per_seed = False
  c.train.equal_time = ""

  c.curve = ml_collections.ConfigDict()
  c.curve.recipe = recipe
  # multiples of the recipe's pretrain.steps and train.steps: one point each, ascending
  c.curve.scales = "1,3,10"
  # adaptation steps T of the validation scores (a conditional GAN also samples at T = 0)
  c.curve.val_steps = "0,10" if base == "cond" else "10"
  c.curve.val_adapt_seeds = "0"
  c.curve.results_dir = "experiments/results"  # relative to the repository; "": workdir only
  c.curve.figures_dir = "experiments/figures"

  d = dagan_cfg.tiny_config() if base == "tiny" else dagan_cfg.get_config()
  c.dagan = d.dagan
  c.dagan.split = "val"  # the points are compared on validation classes, never test ones
  c.dagan.sample_steps = c.curve.val_steps

  if recipe.endswith("_accel"):
    c.train.tasks = 16
    c.dagan.max_classes = 100
  if base == "tiny":
    c.pretrain.steps = 2
    c.train.steps = 2
    c.train.keep_checkpoints = 100  # the tests read every step's checkpoint
    c.curve.scales = "1,3"
    c.curve.val_steps = "2"
    c.curve.results_dir = c.curve.figures_dir = ""
    c.eval.tune_g_trainable = c.eval.tune_psi = ""  # the grid: 2 rates, one adaptation program
    c.eval.cnn_steps = 0  # no CNN low-data metric (one compiled program fewer)
    c.dagan.sample_steps = "2"
  return c
