"""Learned optimisers: a small per-coordinate MLP, as an optax transformation.

In the spirit of the learned_optimization library's small MLP optimisers
(Metz et al.): every parameter coordinate is updated by the same tiny MLP,
which reads per-coordinate features -- the gradient, the parameter, momenta at
a few decay rates, Adam-style normalised gradient and momenta, and the step
number at a few time scales -- each feature normalised by its root mean
square over the tensor. The MLP outputs a direction ``a`` and a log-magnitude
``b``; the update is a residual around SGD::

    update = -exp(log_lr) * grad + step_mult * a * exp(exp_mult * b)

so with the MLP's last layer at zero (:func:`init_lopt_params`) the learned
optimiser *is* SGD(exp(log_lr)), exactly, and meta-training starts from there.
The SGD rate is learned in log space, so Adam's outer steps change it by a
relative amount.

Usage as any optax optimiser, or for ``adapt`` through
:class:`LOptMetaParams` (an initialisation plus the D and G optimisers'
parameters, shared or separate)::

    lopt = mg.init_lopt_params(key, lr=0.05)
    opt = mg.learned_optimizer(lopt)             # optax.GradientTransformation
    meta = mg.LOptMetaParams(init=model.init(key), d=lopt, g=None)   # g=None: shared
    adapted = mg.adapt(meta, support, key, config)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "LOptSpec",
  "LOptParams",
  "LOptState",
  "LOptMetaParams",
  "init_lopt_params",
  "learned_optimizer",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LOptSpec:
  """The learned optimiser's fixed architecture (static; its weights are :class:`LOptParams`).

  Attributes:
    decays: momentum decay rates; each gives a momentum feature and its
      Adam-normalised version.
    rms_decay: decay of the squared-gradient average used for normalisation.
    timescales: the step number enters as ``tanh(step / s)`` for each ``s``.
    step_mult: scale of the MLP's update (per coordinate, in parameter units).
    exp_mult: scale of the MLP's log-magnitude output.
    eps: added to mean squares before square roots.
  """

  decays: tuple[float, ...] = (0.5, 0.9, 0.99)
  rms_decay: float = 0.99
  timescales: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)
  step_mult: float = 1e-3
  exp_mult: float = 1e-3
  eps: float = 1e-8

  @property
  def num_features(self) -> int:
    # grad, param, momenta, grad / rms, momenta / rms, step features
    return 2 + 2 * len(self.decays) + 1 + len(self.timescales)


class LOptParams(NamedTuple):
  """A learned optimiser's meta-learnable weights.

  Attributes:
    log_lr: log of the SGD coefficient of the residual path (a scalar).
    layers: the MLP, a tuple of ``(w [in, out], b [out])``; the last layer
      has 2 outputs (direction, log-magnitude).
  """

  log_lr: jax.Array
  layers: tuple

  @property
  def lr(self) -> jax.Array:
    """The SGD coefficient ``exp(log_lr)``."""
    return jnp.exp(self.log_lr)


class LOptState(NamedTuple):
  """Per-parameter optimiser state (pure data)."""

  count: jax.Array
  momenta: tuple
  rms: PyTree


class LOptMetaParams(NamedTuple):
  """Meta-parameters of a GAN adapted by learned optimisers.

  Attributes:
    init: the initial :class:`metagan_jax.GanParams`.
    d: the discriminator's optimiser.
    g: the generator's optimiser; ``None`` shares ``d``'s.
  """

  init: Any
  d: LOptParams
  g: LOptParams | None = None

  def optimizers(self, spec: LOptSpec | None = None):
    """The (discriminator, generator) optax transformations."""
    d = learned_optimizer(self.d, spec)
    return d, (d if self.g is None else learned_optimizer(self.g, spec))


def init_lopt_params(
  key: jax.Array,
  hidden: tuple[int, ...] = (32,),
  lr: float = 0.05,
  spec: LOptSpec | None = None,
  dtype=jnp.float32,
) -> LOptParams:
  """MLP weights (He-initialised) with a zero last layer: the optimiser starts as SGD.

  Its SGD rate is ``exp(log(lr))``, which may differ from ``lr`` in the last bit.
  """
  spec = spec or LOptSpec()
  sizes = (spec.num_features, *hidden, 2)
  keys = jax.random.split(key, len(sizes) - 1)
  layers = []
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    last = i == len(sizes) - 2
    w = (
      jnp.zeros((n_in, n_out), dtype)
      if last
      else jax.random.normal(k, (n_in, n_out), dtype) * jnp.sqrt(2.0 / n_in).astype(dtype)
    )
    layers.append((w, jnp.zeros((n_out,), dtype)))
  return LOptParams(log_lr=jnp.log(jnp.asarray(lr, dtype)), layers=tuple(layers))


def _rms_normalise(x_NxF: jax.Array, eps: float) -> jax.Array:
  """Each feature column divided by its root mean square over the tensor's coordinates."""
  return x_NxF * jax.lax.rsqrt(jnp.mean(jnp.square(x_NxF), axis=0, keepdims=True) + eps)


def _mlp(layers, x_NxF: jax.Array) -> jax.Array:
  for i, (w, b) in enumerate(layers):
    x_NxF = x_NxF @ w + b
    if i < len(layers) - 1:
      x_NxF = jax.nn.relu(x_NxF)
  return x_NxF


def learned_optimizer(
  lopt_params: LOptParams, spec: LOptSpec | None = None
) -> optax.GradientTransformation:
  """A per-coordinate MLP optimiser as a pure optax transformation.

  Args:
    lopt_params: the weights (possibly traced, e.g. under a meta-gradient).
    spec: the feature set and output scales; must match how ``lopt_params``
      were built (:func:`init_lopt_params`).

  Returns:
    ``optax.GradientTransformation``; ``update`` needs ``params``.
  """
  spec = spec or LOptSpec()
  n_in = lopt_params.layers[0][0].shape[0]
  if n_in != spec.num_features:
    raise ValueError(
      f"lopt_params' first layer takes {n_in} features but the spec gives "
      f"{spec.num_features} (decays={spec.decays}, timescales={spec.timescales}); "
      f"build the params with init_lopt_params(key, spec=spec)."
    )

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return LOptState(
      count=jnp.zeros((), jnp.int32), momenta=tuple(zeros for _ in spec.decays), rms=zeros
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        "learned_optimizer's update needs params (its features include them): "
        "call opt.update(grads, state, params)."
      )
    count = state.count + 1
    momenta = tuple(
      jax.tree.map(lambda m, g, b=b: b * m + (1 - b) * g, m_tree, updates)
      for b, m_tree in zip(spec.decays, state.momenta)
    )
    rms = jax.tree.map(
      lambda v, g: spec.rms_decay * v + (1 - spec.rms_decay) * g * g, state.rms, updates
    )
    bias = 1 - spec.rms_decay ** count.astype(jnp.float32)
    t = count.astype(jnp.float32)
    step_feats = jnp.tanh(t / jnp.asarray(spec.timescales))

    def leaf(g, p, v, *ms):
      dtype = g.dtype
      inv = jax.lax.rsqrt(v / bias.astype(dtype) + spec.eps)
      raw = [g, p, *ms, g * inv, *(m * inv for m in ms)]
      x = _rms_normalise(jnp.stack([r.reshape(-1) for r in raw], axis=-1), spec.eps)
      x = jnp.concatenate(
        [x, jnp.broadcast_to(step_feats.astype(dtype), (x.shape[0], len(spec.timescales)))], axis=-1
      )
      out = _mlp(lopt_params.layers, x)
      step = spec.step_mult * out[:, 0] * jnp.exp(spec.exp_mult * out[:, 1])
      return -lopt_params.lr.astype(dtype) * g + step.reshape(g.shape).astype(dtype)

    new = jax.tree.map(leaf, updates, params, rms, *momenta)
    return new, LOptState(count=count, momenta=momenta, rms=rms)

  return optax.GradientTransformation(init_fn, update_fn)
