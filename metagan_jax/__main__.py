"""``python -m metagan_jax generate ...``: the same as the ``metagan`` console script."""

import sys

from metagan_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())
