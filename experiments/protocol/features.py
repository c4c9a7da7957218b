"""Stage 1, the feature network: a CNN trained on meta-training classes only, whose
penultimate layer is the space every metric is computed in."""

from __future__ import annotations

import hashlib
import json
import os
import time

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import train_lib
from metagan_jax import layers


class FeatureNet(nn.Module):
  """Small CNN classifier; ``features`` are its penultimate layer.

  Its convolutions are ``nn.Conv(width, (3, 3))`` computed as im2col + one matmul
  (:class:`metagan_jax.layers.Conv3x3`, same parameters and names): on CPU its
  training step runs 2.3x faster that way, its whole training 1.6x (issue 20).
  """

  num_classes: int
  dim: int = 64
  widths: tuple[int, ...] = (16, 32, 64)

  @nn.compact
  def __call__(self, x):
    h = x
    for i, width in enumerate(self.widths):
      h = nn.relu(layers.Conv3x3(width, name=f"Conv_{i}")(h))
      h = nn.avg_pool(h, (2, 2), (2, 2))
    feats = nn.relu(nn.Dense(self.dim)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(feats), feats


def _feature_net_key(config, split) -> str:
  fc = {k: v for k, v in config.features.to_dict().items() if k != "cache_dir"}
  h = hashlib.sha256(
    json.dumps(
      [fc, config.dataset, split.names, float(config.get("blur", 0.0))], sort_keys=True
    ).encode()
  )
  return h.hexdigest()[:12]


def feature_net(config, verbose: bool = True):
  """Trains (or loads from ``features.cache_dir``) the feature CNN.

  Trained on the meta-training classes only (no rotations), holding out
  ``features.holdout`` images per class to report its accuracy.

  Returns:
    ``(features_fn, info)``: ``features_fn(images [n, 28, 28, 1]) -> np [n, dim]``
    and ``{"heldout_acc", "train_acc", "num_classes", "steps", "cache"}``.
  """
  fc = config.features
  split = train_lib.load_split(config, "train", rotations=False, verbose=verbose)
  # widths: the default net's unless the config names others (the selection filter's net)
  net = FeatureNet(len(split), fc.dim, tuple(fc.get("widths", FeatureNet.widths)))
  key = _feature_net_key(config, split)
  path = os.path.join(fc.cache_dir, f"featnet_{key}")
  params0 = net.init(jax.random.key(fc.seed), jnp.zeros((1, *split.image_shape)))["params"]
  if os.path.exists(path + ".json") and os.path.exists(path + ".msgpack"):
    with open(path + ".msgpack", "rb") as f:
      params = flax.serialization.from_bytes(params0, f.read())
    with open(path + ".json") as f:
      info = json.load(f)
  else:
    t0 = time.perf_counter()
    n = min(len(x) for x in split.images)
    rng = np.random.default_rng(fc.seed)
    perms = [rng.permutation(len(x)) for x in split.images]
    tr = [x[p[fc.holdout :]] for x, p in zip(split.images, perms)]
    te = [x[p[: fc.holdout]] for x, p in zip(split.images, perms)]
    x_tr = jnp.asarray(np.concatenate(tr))
    y_tr = jnp.asarray(np.concatenate([np.full(len(x), i) for i, x in enumerate(tr)]))
    x_te = np.concatenate(te)
    y_te = np.concatenate([np.full(len(x), i) for i, x in enumerate(te)])
    opt = optax.adam(fc.lr)

    def loss_fn(p, xb, yb):
      logits, _ = net.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    # One jitted step per call: XLA:CPU runs convolutions inside a scan/while
    # loop ~10x slower than at top level.
    @jax.jit
    def train_step(p, s, xb, yb):
      l, g = jax.value_and_grad(loss_fn)(p, xb, yb)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s, l

    params, s = params0, opt.init(params0)
    x_np, y_np = np.asarray(x_tr), np.asarray(y_tr)
    for _ in range(fc.steps):
      idx = rng.integers(0, len(x_np), fc.batch)
      sh = rng.integers(-2, 3, 2)  # light augmentation: shifts of up to 2 px
      xb = np.roll(x_np[idx], (int(sh[0]), int(sh[1])), axis=(1, 2))
      params, s, _ = train_step(params, s, xb, y_np[idx])
    predict = jax.jit(lambda p, x: net.apply({"params": p}, x)[0].argmax(-1))
    acc = lambda x, y: float(
      np.mean(
        np.concatenate(
          [np.asarray(predict(params, x[i : i + 1024])) for i in range(0, len(x), 1024)]
        )
        == y
      )
    )
    info = {
      "heldout_acc": acc(x_te, y_te),
      "train_acc": acc(np.asarray(x_tr[:4096]), np.asarray(y_tr[:4096])),
      "num_classes": len(split),
      "steps": fc.steps,
      "train_s": time.perf_counter() - t0,
      "heldout_per_class": fc.holdout,
      "images_per_class": n,
    }
    if train_lib.is_main_process():  # other processes trained the same net; one writes
      os.makedirs(fc.cache_dir, exist_ok=True)
      # Renamed into place, .json last: a reader sees a complete cache or none.
      with open(path + ".msgpack.tmp", "wb") as f:
        f.write(flax.serialization.to_bytes(params))
      os.replace(path + ".msgpack.tmp", path + ".msgpack")
      with open(path + ".json.tmp", "w") as f:
        json.dump(info, f, indent=1)
      os.replace(path + ".json.tmp", path + ".json")
  info = dict(info, cache=path)
  feat = jax.jit(lambda p, x: net.apply({"params": p}, x)[1])

  def features_fn(x):
    x = np.asarray(x, np.float32)
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    out = np.concatenate(
      [np.asarray(feat(params, x[i : i + 1024])) for i in range(0, len(x), 1024)]
    )
    return out.reshape(*shape[:-3], out.shape[-1]).astype(np.float64)

  return features_fn, info


def scaled_features(features_fn, reference):
  """``features_fn`` divided by one constant: the reference images' features get unit mean
  square, so the cubic KID kernel sees O(1) inner products whatever the net's scale."""
  scale = float(np.sqrt(np.mean(features_fn(reference) ** 2))) or 1.0  # 0: dead features
  return lambda x: features_fn(x) / scale
