"""The augmentation protocol on finished runs: do a run's samples help a C-way classifier
trained from scratch on K images per class, on top of the standard augmentation?
(``experiments/protocol/dagan.py``.)

Run on validation classes (choosing a recipe; never the test classes for that):
  python experiments/dagan.py --config experiments/configs/dagan.py --workdir runs/dagan_val \
      --config.runs="cond=runs/cond_pilot_l" --config.dagan.split=val
On the evaluation alphabets, for the results page:
  python experiments/dagan.py --config experiments/configs/dagan.py --workdir runs/dagan_test \
      --config.runs="reptile=runs/omniglot:reptile;cond=runs/cond:transfer" \
      --config.dagan.split=test

Without runs (``--config.runs=""``), the arms that use no samples alone (``real``, ``aug``,
``aug_copies``) and their curves: the first stage of research log 35's rule, e.g.
  python experiments/dagan.py --config experiments/configs/dagan.py --workdir runs/aug_val \
      --config.dagan.aug_rotate=10 --config.dagan.steps=4000

``runs``: ``name=path[:method]`` separated by ``;``. ``path`` is a run folder of
``experiments/omniglot.py`` (``method`` as in ``load_run``) or of ``cond_pilot.py`` (its
pre-trained conditional GAN, ``transfer``). Every row is sampled at each T of
``dagan.sample_steps`` (an unconditional GAN at T > 0 only).
Tiny variant for tests: ``tiny_config()``.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.runs = ""
  c.data_dir = ""  # "" : each run's own
  c.dagan = ml_collections.ConfigDict()
  c.dagan.split = "val"  # "val" chooses; "test" (evaluation alphabets) reports
  c.dagan.num_classes = 100
  c.dagan.k = 4
  c.dagan.subsets = 10  # classifiers per arm, each on its own K-subset of every class
  c.dagan.split_seed = 0
  c.dagan.seed = 0  # the CNNs' initialisations and batch draws (shared by the arms)
  c.dagan.steps = 1000  # Adam steps of every classifier, the same in every arm
  c.dagan.curve_points = 8  # test accuracy every steps / 8 steps: the arms' curves
  c.dagan.batch = 32
  c.dagan.lr = 1e-3
  c.dagan.classifier = "cnn"  # "cnn" (conv 32, conv 64, dense 128) or "conv4" (normalised)
  # the standard augmentation (metagan_jax.augment.random_affine), real and generated alike
  c.dagan.aug_shift = 0.075  # shifts of up to 2 px at 28 x 28
  c.dagan.aug_rotate = 0.0  # degrees
  c.dagan.aug_scale = 0.0  # relative
  c.dagan.share = 0.5  # aug_gen and aug_copies: the share of batches from the pool
  c.dagan.weight = 1.0  # ... and their loss weight
  c.dagan.filter = ""  # "prototype": keep samples nearest their own class's prototype
  c.dagan.filter_candidates = 2  # candidates per pool image the filter chooses from
  c.dagan.pool = 32  # generated images per class and subset
  # classes adapted and sampled at a time (same keys, same images; 0: all at once). All 100
  # unconditional fsgan28 GANs adapted at once took 14 GB and were killed beside the tests.
  c.dagan.max_classes = 25
  c.dagan.sample_steps = "0,10"  # T of the samples
  c.dagan.psi = 0.0  # sampling truncation of the pools; 0: each run's own (1 without tuning)
  c.dagan.grid_classes = 8
  return c


def tiny_config():
  c = get_config()
  c.dagan.num_classes = 5
  c.dagan.subsets = 3
  c.dagan.steps = 40
  c.dagan.curve_points = 4
  c.dagan.batch = 8
  c.dagan.pool = 4
  c.dagan.grid_classes = 2
  return c
