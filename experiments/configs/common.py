"""The fields every Omniglot experiment config has (see omniglot_short.py for the run command)."""

import ml_collections

ALL_METHODS = "maml,fomaml,reptile,metasgd,transfer,scratch"


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by the short, full and tiny configs."""
  c = ml_collections.ConfigDict()
  c.name = "omniglot"
  c.dataset = "omniglot"          # offline Omniglot if found, else TFDS (see docs/data.md)
  c.data_dir = ""                 # "" = found automatically (METAGAN_OMNIGLOT28_DIR, ../shared/...)
  c.methods = ALL_METHODS         # comma-separated: meta methods, "transfer", "scratch"
  c.meta_seeds = "0,1,2"          # meta-training seeds (one run folder each)

  # The GAN and its adaptation rule: the same for every method (Meta-SGD uses
  # its meta-learned per-parameter learning rates instead of inner_lr).
  c.model = "dcgan28"
  c.loss = "ns"
  c.inner_steps = 5               # inner steps during meta-training
  c.d_steps = 1
  c.g_steps = 1
  c.inner_lr = 0.05               # SGD

  c.train = ml_collections.ConfigDict()
  c.train.steps = 2000            # meta-steps (transfer: the same number of "steps", see README)
  c.train.tasks = 8               # T tasks per meta-step
  c.train.k = 4                   # support images per task (= eval.k)
  c.train.q = 4                   # query images per task
  c.train.outer_lr = 1e-3         # Adam, all meta methods
  c.train.transfer_lr = 2e-4      # Adam(b1=0.5) for the transfer GAN
  c.train.ckpt_every = 200
  c.train.keep_checkpoints = 3
  c.train.log_every = 10
  c.train.sample_every = 500
  c.train.sample_streams = 0      # task-sampling streams (0 = one per process; see omniglot.py)
  c.train.max_nonfinite = 20      # stop after this many non-finite updates in a row
  c.train.step_sleep = 0.0        # testing only: seconds to sleep per step (kill/resume test)
  c.train.inject_nan_steps = ""   # testing only: comma-separated steps whose data is made NaN

  c.features = ml_collections.ConfigDict()
  c.features.steps = 3000
  c.features.batch = 64
  c.features.lr = 1e-3
  c.features.dim = 64
  c.features.holdout = 4          # images per meta-training class kept for its accuracy
  c.features.seed = 0
  c.features.cache_dir = "runs/cache"

  c.eval = ml_collections.ConfigDict()
  c.eval.num_classes = 20         # the first n of experiments/omniglot_test_classes.json
  c.eval.k = 4                    # support images; the other images of a class are the reference
  c.eval.steps = "0,5,10,25,50"   # adaptation steps T
  c.eval.headline = 10
  c.eval.adapt_seeds = "0,1"
  c.eval.n_gen = 64               # generated samples per class
  c.eval.n_aug = 64               # generated samples per class added in the low-data test
  c.eval.classifier_steps = 300
  c.eval.n_boot = 2000
  c.eval.grid_classes = 6
  c.eval.split_seed = 0
  return c
