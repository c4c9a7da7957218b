"""From an experiment config to the library's objects: model, adaptation rule, meta-step, GAN step.

An experiment config (``experiments/configs/*.py``, saved with every run as
``config.json``) is a nested mapping; these functions read it with ``cfg[key]``
and ``cfg.get(key)``, so an ``ml_collections.ConfigDict`` and the plain dict of
a run's ``config.json`` work alike. The experiments and :func:`metagan_jax.load_run`
both build their objects here, so a loaded run adapts exactly as its evaluation did.

A *rule* is how a model adapts at test time: ``{"opt": "sgd" | "adam", "lr",
"g_trainable", "d_trainable"}`` (plus ``"lr_mult"`` for Meta-SGD, which scales
its learned rates).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

import jax
import optax

from metagan_jax import gan
from metagan_jax.inner import AdaptConfig, MetaSGDParams
from metagan_jax.meta import MetaConfig, metasgd_outer
from metagan_jax.models import GanModel, GanParams, get_model

__all__ = [
  "model",
  "default_rule",
  "inner_optimizer",
  "metasgd_direction",
  "adapt_config",
  "meta_config",
  "pretrain_config",
  "pretrained_params",
  "with_rule",
]

Config = Mapping[str, Any]


def _plain(x) -> Any:
  return x.to_dict() if hasattr(x, "to_dict") else (dict(x) if isinstance(x, Mapping) else x)


@functools.cache
def _model(name: str, kwargs_json: str) -> GanModel:
  return get_model(name, **json.loads(kwargs_json))


def model(cfg: Config) -> GanModel:
  """The config's GAN pair (one object per name and kwargs, so jitted functions are reused)."""
  return _model(cfg["model"], json.dumps(_plain(cfg.get("model_kw")) or {}, sort_keys=True))


def default_rule(cfg: Config) -> dict:
  """The config's adaptation rule: ``{"opt", "lr", "g_trainable", "d_trainable"}``."""
  return {
    "opt": cfg["inner_opt"],
    "lr": float(cfg["inner_lr"]),
    "g_trainable": cfg["g_trainable"],
    "d_trainable": cfg["d_trainable"],
  }


def inner_optimizer(
  kind: str, lr, b1: float = 0.0, b2: float = 0.9
) -> optax.GradientTransformation:
  """``sgd`` or ``adam`` as an inner optimiser (Adam with ``eps_root`` for second order)."""
  if kind == "sgd":
    return optax.sgd(lr)
  if kind == "adam":
    return optax.adam(lr, b1=b1, b2=b2, eps_root=1e-12)
  raise ValueError(f"inner optimiser {kind!r} is not 'sgd' or 'adam'.")


def metasgd_direction(cfg: Config) -> optax.GradientTransformation | None:
  """Meta-SGD's step direction: ``"sgd"`` (the gradient) or ``"adam"`` (Adam's, inner betas)."""
  kind = cfg.get("metasgd_direction", "sgd")
  if kind == "sgd":
    return None
  if kind == "adam":
    return optax.scale_by_adam(b1=cfg["inner_b1"], b2=cfg["inner_b2"], eps_root=1e-12)
  raise ValueError(
    f"config.metasgd_direction={kind!r}: use 'sgd' (update -lr * grad) or 'adam' "
    f"(-lr * Adam's direction)."
  )


def adapt_config(
  cfg: Config, inner_steps: int | None = None, rule: dict | None = None
) -> AdaptConfig:
  """The adaptation rule as an :class:`AdaptConfig` (the config's rule unless ``rule``)."""
  rule = dict(default_rule(cfg), **(rule or {}))
  trainable = lambda v: None if v in (None, "", "all") else v
  return AdaptConfig(
    model(cfg),
    inner_steps=int(inner_steps or cfg["inner_steps"]),
    metasgd_direction=metasgd_direction(cfg),
    d_steps=int(cfg["d_steps"]),
    g_steps=int(cfg["g_steps"]),
    inner_lr=rule["lr"],
    inner_opt=inner_optimizer(rule["opt"], rule["lr"], cfg["inner_b1"], cfg["inner_b2"]),
    loss=cfg["loss"],
    g_trainable=trainable(rule["g_trainable"]),
    d_trainable=trainable(rule["d_trainable"]),
    augment=str(rule.get("augment", cfg.get("augment", "")) or ""),
    n_fake=int(rule.get("n_fake", cfg.get("n_fake", 0)) or 0) or None,
  )


def meta_config(cfg: Config, algorithm: str) -> MetaConfig:
  """The meta-learning step of ``algorithm`` with the config's rule and outer Adam."""
  tc = cfg["train"]
  adapt = adapt_config(cfg)
  n2 = str(cfg.get("second_order_steps", "all"))
  if n2 != "all" and not n2.isdigit():
    raise ValueError(
      f"config.second_order_steps={n2!r}: use 'all' (exact second order) or an "
      f"integer n in [0, inner_steps] (second order through the last n inner steps)."
    )
  if n2 != "all" and algorithm in ("maml", "metasgd"):  # meta-training only: no test-time effect
    adapt = dataclasses.replace(adapt, second_order_steps=int(n2))
  adam = lambda lr: optax.adam(lr, b1=tc.get("outer_b1", 0.9), eps=tc.get("outer_eps", 1e-8))
  outer = adam(tc["outer_lr"])
  rate_lr = float(tc.get("rate_lr", 0.0) or 0.0)
  if rate_lr < 0:
    raise ValueError(
      f"config.train.rate_lr={rate_lr}: use 0 (the rates share train.outer_lr) "
      f"or a positive outer learning rate for Meta-SGD's rates."
    )
  if algorithm == "metasgd" and rate_lr > 0:
    outer = metasgd_outer(outer, adam(rate_lr))
  return MetaConfig(adapt, algorithm=algorithm, outer_opt=outer)


def pretrain_config(cfg: Config) -> gan.GanTrainConfig:
  """The pre-training recipe: the config's model and loss, Adam for both players, an EMA of G."""
  pc = cfg["pretrain"]
  opt = optax.adam(pc["lr"], b1=pc["b1"], b2=pc["b2"])
  return gan.GanTrainConfig(
    model(cfg),
    loss=cfg["loss"],
    d_opt=opt,
    g_opt=opt,
    d_steps=int(pc["d_steps"]),
    ema=float(pc["ema"]),
    augment=str(pc.get("augment", "") or ""),
    recon_weight=float(pc.get("recon_weight", 0.0)),
    mode_seeking_weight=float(pc.get("mode_seeking_weight", 0.0)),
    mismatch_weight=float(pc.get("mismatch_weight", 0.0)),
    class_weight=float(pc.get("class_weight", 0.0)),
  )


def pretrained_params(state: gan.GanTrainState) -> GanParams:
  """What adapts after pre-training: the EMA generator and the discriminator."""
  return GanParams(g=state.ema_g, d=state.params.d)


def with_rule(meta_params, rule: dict):
  """Meta-SGD's rule scales its learned rates by ``lr_mult``; other rules need nothing here."""
  if isinstance(meta_params, MetaSGDParams):
    mult = float(rule.get("lr_mult", 1.0))
    return MetaSGDParams(init=meta_params.init, lr=jax.tree.map(lambda x: x * mult, meta_params.lr))
  return meta_params
