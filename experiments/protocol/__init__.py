"""The evaluation protocol: adapt every method to unseen Omniglot classes and score it.

See docs/explanation/protocol.md for the protocol in words. One module per stage:

1. ``features``: a feature CNN trained on meta-training classes only;
2. ``classes``: 20 fixed test classes from the evaluation alphabets, K support
   images each (the rest is the held-out reference), and the validation classes;
3. ``tuning``: every method's test-time rule, chosen on the validation classes;
4. ``scoring``: adapt for T in ``eval.steps`` and score the samples against the
   held-out images in feature space (KID, FD, class fidelity, diversity,
   memorisation, low-data classification), next to a copy baseline;
5. ``stats``: means, bootstrap CIs and paired tests over seeds and classes;
6. ``report``: the results table and the figures;
7. ``dagan``: the DAGAN augmentation protocol (does a run's samples help a classifier
   trained from scratch on K images per class?), run on finished runs by
   ``experiments/dagan.py``.

A new metric is one function in ``scoring``; a new test, one in ``stats``.
"""

from experiments.protocol.classes import (
  TEST_CLASSES_FILE,
  support_heldout,
  test_classes,
  val_classes,
)
from experiments.protocol.features import FeatureNet, feature_net, scaled_features
from experiments.protocol.report import (
  headline_picture,
  jsonable,
  markdown_table,
  plot_curves,
  sample_grid,
  save_grids,
)
from experiments.protocol.scoring import (
  METRICS,
  adapt_and_generate,
  copy_baseline,
  evaluate,
  lowdata_accuracy,
  lowdata_cnn_accuracy,
  real_scores,
  score,
)
from experiments.protocol.stats import summarise
from experiments.protocol.tuning import rule_grid, rule_name, tune_rules

__all__ = [
  "METRICS",
  "TEST_CLASSES_FILE",
  "FeatureNet",
  "adapt_and_generate",
  "copy_baseline",
  "evaluate",
  "feature_net",
  "headline_picture",
  "jsonable",
  "lowdata_accuracy",
  "lowdata_cnn_accuracy",
  "markdown_table",
  "plot_curves",
  "real_scores",
  "rule_grid",
  "rule_name",
  "sample_grid",
  "save_grids",
  "scaled_features",
  "score",
  "summarise",
  "support_heldout",
  "test_classes",
  "tune_rules",
  "val_classes",
]
