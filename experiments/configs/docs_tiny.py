"""The run that docs/tutorials/generate_from_your_images.md makes while the docs build.

tiny.py's model and rule, trained on a folder of images (``dataset="folder"``): 300
pre-training steps of batch 16, then 20 Reptile meta-steps (T = 4 tasks, K = Q = 4) from the
pre-trained GAN. Too short to draw clean glyphs; enough for ``load_run`` and ``generate``.

Run (a folder of one sub-folder per class, at least 16 classes in the train split):
  python experiments/omniglot.py --config experiments/configs/docs_tiny.py \
      --config.data_dir=PATH/TO/CLASS_FOLDERS --workdir /tmp/docs_tiny --mode train
"""

from experiments.configs import tiny


def get_config():
  c = tiny.get_config()
  c.name = "docs_tiny"
  c.dataset = "folder"
  c.methods = "reptile"
  c.pretrain.steps = 300
  c.pretrain.batch = 16  # classes per batch: the train split needs at least 16
  c.pretrain.lr = 8e-4
  c.train.steps = 20
  c.train.tasks = 4
  c.train.k = 4
  c.train.q = 4
  c.train.ckpt_every = 20
  c.train.log_every = 10
  c.train.sample_every = 20
  c.eval.k = 4
  return c
