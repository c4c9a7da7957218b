"""The DAGAN augmentation protocol (issue 43) on finished runs: does a run's samples help a
C-way CNN trained from scratch on K images per class? (``experiments/protocol/dagan.py``.)

Run on validation classes (choosing a recipe; never the test classes for that):
  python experiments/dagan.py --config experiments/configs/dagan.py --workdir runs/dagan_val \
      --config.runs="cond=runs/cond_pilot_l" --config.dagan.split=val
On the evaluation alphabets, for the results page:
  python experiments/dagan.py --config experiments/configs/dagan.py --workdir runs/dagan_test \
      --config.runs="reptile=runs/omniglot:reptile;cond=runs/cond:transfer" \
      --config.dagan.split=test

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
  c.dagan.steps = 1000  # Adam steps of every CNN, the same in every arm
  c.dagan.batch = 32
  c.dagan.lr = 1e-3
  c.dagan.shift = 0.075  # jitter: random shifts of up to 2 px at 28 x 28
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
  c.dagan.batch = 8
  c.dagan.pool = 4
  c.dagan.grid_classes = 2
  return c
