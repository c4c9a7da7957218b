"""Full Omniglot protocol: 3 meta seeds x 2 adaptation seeds (hours on CPU; runs on a GPU unchanged).

Run:
  python experiments/omniglot.py --config experiments/configs/omniglot_full.py \
      --workdir runs/omniglot_full
Resume a killed run by adding --resume.
"""

from experiments.configs import common


def get_config():
  c = common.base_config()
  c.name = "omniglot_full"
  return c
