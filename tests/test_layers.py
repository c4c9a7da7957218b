"""The fast conv formulation (im2col / scatter matmuls) equals flax's convolutions.

The library uses ``conv_impl="matmul"`` by default because it is much faster
when vmapped over per-task weights; these tests keep it numerically identical
to the plain ``nn.Conv`` / ``nn.ConvTranspose`` formulation, for values, first
derivatives, and the second-order MAML meta-gradient of the whole dcgan28 pair.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import metagan_jax as mg
from metagan_jax import layers


def _x64(f):
  @functools.wraps(f)
  def wrapped(*a, **k):
    with jax.enable_x64(True):
      return f(*a, **k)
  return wrapped


@pytest.mark.parametrize("hw,c,o", [(28, 1, 32), (14, 32, 64), (8, 3, 5)])
@_x64
def test_conv_equals_flax_conv(hw, c, o):
  x = jax.random.normal(jax.random.key(0), (3, hw, hw, c), jnp.float64)
  ref = nn.Conv(o, (4, 4), (2, 2), padding=((1, 1), (1, 1)), param_dtype=jnp.float64)
  p = ref.init(jax.random.key(1), x)
  y_ref = ref.apply(p, x)
  y = layers.Conv4x4s2(o).apply(p, x)
  assert y.shape == (3, hw // 2, hw // 2, o)
  np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw,c,o", [(7, 64, 32), (14, 32, 1), (4, 3, 5)])
@_x64
def test_conv_transpose_equals_flax_conv_transpose(hw, c, o):
  x = jax.random.normal(jax.random.key(0), (3, hw, hw, c), jnp.float64)
  ref = nn.ConvTranspose(o, (4, 4), (2, 2), padding=((2, 2), (2, 2)), param_dtype=jnp.float64)
  p = ref.init(jax.random.key(1), x)
  y_ref = ref.apply(p, x)
  y = layers.ConvTranspose4x4s2(o).apply(p, x)
  assert y.shape == (3, 2 * hw, 2 * hw, o)
  np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


@_x64
def test_layer_derivatives_up_to_second_order():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3), jnp.float64)
  k = jax.random.normal(jax.random.key(1), (4, 4, 3, 4), jnp.float64)
  check_grads(layers.conv4x4s2, (x, k), order=2, modes=["rev"])
  check_grads(layers.conv_transpose4x4s2, (x, k), order=2, modes=["rev"])


@_x64
def test_dcgan28_maml_meta_gradient_identical_across_conv_impls():
  """The fast path changes no number: second-order meta-gradients agree to float64 rounding."""
  grads = {}
  imgs = jax.random.uniform(jax.random.key(1), (1, 4, 28, 28, 1), jnp.float64, -1, 1)
  tasks = mg.Tasks(imgs[:, :2], imgs[:, 2:])
  inits = {}
  for impl in ("matmul", "xla"):
    model = mg.models.dcgan28(conv_impl=impl)
    inits[impl] = model.init(jax.random.key(0))
    cfg = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=1, inner_lr=0.05), algorithm="maml")
    params = jax.tree.map(lambda a: a.astype(jnp.float64), inits[impl])
    grads[impl], _ = jax.jit(functools.partial(mg.meta_gradients, config=cfg))(
        params, tasks, jax.random.key(2))
  same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(inits["matmul"]),
                                                     jax.tree.leaves(inits["xla"]))]
  assert all(same), "both impls must initialise identically (also under x64)"
  for a, b in zip(jax.tree.leaves(grads["matmul"]), jax.tree.leaves(grads["xla"])):
    scale = float(jnp.max(jnp.abs(b)))
    assert scale > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-11 * scale)
