"""metagan_jax: meta-learning GANs in JAX (MAML, first-order MAML, Reptile, Meta-SGD,
learned optimisers).

The core (models, losses, ``adapt``, ``meta_step``) needs only jax, flax and
optax; the data layer (``metagan_jax.data``) imports TensorFlow Datasets lazily,
only for TFDS sources.
"""

from metagan_jax import (
  audio,
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
  leave_one_out_sets,
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
  "GanLoss",
  "GanModel",
  "GanParams",
  "GanTrainConfig",
  "GanTrainState",
  "InnerNoise",
  "LOptMetaParams",
  "LOptParams",
  "LOptSpec",
  "LOptState",
  "LoadedRun",
  "MetaConfig",
  "MetaSGDParams",
  "MetaState",
  "Preprocessing",
  "RunError",
  "Tasks",
  "adapt",
  "adapt_prefix",
  "adapt_with_aux",
  "audio",
  "augment",
  "backend",
  "checkpoint",
  "compile_cache",
  "data",
  "gan",
  "get_loss",
  "get_model",
  "init",
  "init_lopt_params",
  "inner_noise",
  "leave_one_out_sets",
  "layers",
  "learned_optimizer",
  "load_run",
  "lopt_train",
  "losses",
  "maml_objective",
  "meta_gradients",
  "meta_step",
  "metasgd_outer",
  "metrics",
  "models",
  "parallel",
  "per_parameter_sgd",
  "per_task_gradient",
  "recipes",
  "toy",
  "trainable_mask",
]
