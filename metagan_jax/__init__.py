"""metagan_jax: meta-learning GANs in JAX (MAML, first-order MAML, Reptile, Meta-SGD,
learned optimisers).

The core (models, losses, ``adapt``, ``meta_step``) needs only jax, flax and
optax; the data layer (``metagan_jax.data``) imports TensorFlow Datasets lazily,
only for TFDS sources.
"""

from metagan_jax import (
  augment,
  backend,
  checkpoint,
  compile_cache,
  data,
  gan,
  layers,
  lopt_train,
  losses,
  metrics,
  models,
  parallel,
  recipes,
  toy,
)
from metagan_jax.gan import GanTrainConfig, GanTrainState
from metagan_jax.inner import (
  AdaptConfig,
  InnerNoise,
  MetaSGDParams,
  adapt,
  adapt_prefix,
  adapt_with_aux,
  inner_noise,
  per_parameter_sgd,
  trainable_mask,
)
from metagan_jax.lopt import (
  LOptMetaParams,
  LOptParams,
  LOptSpec,
  LOptState,
  init_lopt_params,
  learned_optimizer,
)
from metagan_jax.losses import GanLoss, get_loss
from metagan_jax.meta import (
  ALGORITHMS,
  MetaConfig,
  MetaState,
  init,
  maml_objective,
  meta_gradients,
  meta_step,
  metasgd_outer,
  per_task_gradient,
)
from metagan_jax.models import GanModel, GanParams, get_model
from metagan_jax.runs import LoadedRun, Preprocessing, RunError, load_run
from metagan_jax.tasks import Tasks

__version__ = "0.1.0"

__all__ = [
  "ALGORITHMS",
  "AdaptConfig",
  "augment",
  "backend",
  "checkpoint",
  "compile_cache",
  "data",
  "gan",
  "layers",
  "GanLoss",
  "GanModel",
  "GanParams",
  "GanTrainConfig",
  "GanTrainState",
  "InnerNoise",
  "trainable_mask",
  "MetaConfig",
  "MetaSGDParams",
  "MetaState",
  "Tasks",
  "adapt",
  "adapt_prefix",
  "adapt_with_aux",
  "LOptMetaParams",
  "LOptParams",
  "LOptSpec",
  "LOptState",
  "init_lopt_params",
  "learned_optimizer",
  "lopt_train",
  "get_loss",
  "get_model",
  "init",
  "inner_noise",
  "losses",
  "maml_objective",
  "meta_gradients",
  "meta_step",
  "metasgd_outer",
  "metrics",
  "models",
  "parallel",
  "per_parameter_sgd",
  "recipes",
  "load_run",
  "LoadedRun",
  "Preprocessing",
  "RunError",
  "per_task_gradient",
  "toy",
]
