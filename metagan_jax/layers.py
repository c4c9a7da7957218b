"""4x4 stride-2 convolutions written as matrix products.

Meta-learning ``vmap``s the models over per-task weights. XLA turns a
convolution with a batched kernel into a *grouped* convolution (one group per
task), and on CPU grouped convolutions, their transposes and their second
derivatives run far below the matmul rate. Written as patch extraction (a few
strided slices) and one matmul, the same layers batch into plain batched
matmuls whose derivatives are matmuls too.

The layers keep flax's parameter layout and numerics:

* :class:`Conv4x4s2` equals ``nn.Conv(features, (4, 4), (2, 2), padding=((1, 1), (1, 1)))``
  (PyTorch ``Conv2d(k=4, s=2, p=1)``), kernel ``[4, 4, C_in, C_out]``.
* :class:`ConvTranspose4x4s2` equals ``nn.ConvTranspose(features, (4, 4), (2, 2),
  padding=((2, 2), (2, 2)))`` (PyTorch ``ConvTranspose2d(k=4, s=2, p=1)``),
  kernel ``[4, 4, C_in, C_out]``. It is computed in the "scatter" form: every
  input pixel times the kernel, overlap-added into the output, so no
  multiplications by inserted zeros.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

default_kernel_init = nn.initializers.lecun_normal()


def conv4x4s2(x_NxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array) -> jax.Array:
  """Conv 4x4, stride 2, padding 1 (H, W even) as im2col + one matmul."""
  n, h, w, c = x_NxHxWxC.shape
  ho, wo = h // 2, w // 2
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Patch layout (a, b, c) matches kernel.reshape(16 * C, O).
  patches = jnp.concatenate(
      [xp[:, a:a + 2 * ho:2, b:b + 2 * wo:2, :] for a in range(4) for b in range(4)], axis=-1)
  y = patches.reshape(n * ho * wo, 16 * c) @ kernel_4x4xCxO.reshape(16 * c, -1)
  return y.reshape(n, ho, wo, -1)


def conv_transpose4x4s2(x_NxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array) -> jax.Array:
  """Transposed conv 4x4, stride 2 (flax padding ((2, 2), (2, 2))): H x W -> 2H x 2W."""
  n, h, w, c = x_NxHxWxC.shape
  o = kernel_4x4xCxO.shape[-1]
  # flax does not flip the kernel; the scatter form needs it flipped:
  # input pixel (i, j) with tap (a, b) lands at padded output (2i + a, 2j + b).
  k = kernel_4x4xCxO[::-1, ::-1]  # [a, b, c, o], a = 2A + R
  k = k.reshape(2, 2, 2, 2, c, o).transpose(4, 0, 2, 1, 3, 5)  # [c, A, B, R, S, o]
  cols = (x_NxHxWxC.reshape(n * h * w, c) @ k.reshape(c, 16 * o)).reshape(n, h, w, 2, 2, 2, 2, o)
  out = 0.0
  for big_a in range(2):
    for big_b in range(2):
      part = cols[:, :, :, big_a, big_b].transpose(0, 1, 3, 2, 4, 5)  # [n, i, R, j, S, o]
      out = out + jnp.pad(part, ((0, 0), (big_a, 1 - big_a), (0, 0), (big_b, 1 - big_b),
                                 (0, 0), (0, 0)))
  out = out.reshape(n, 2 * h + 2, 2 * w + 2, o)
  return out[:, 1:-1, 1:-1, :]


class _Conv4x4s2Layer(nn.Module):
  """A 4x4 stride-2 layer with flax's ``kernel [4, 4, C_in, C_out]`` and ``bias`` params."""

  features: int
  kernel_init: nn.initializers.Initializer = default_kernel_init
  param_dtype: jnp.dtype = jnp.float32
  # Subclasses set ``op`` (a class attribute, not a module field): the product.

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    return self.op(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


class Conv4x4s2(_Conv4x4s2Layer):
  """``nn.Conv(features, (4, 4), (2, 2), padding=1)`` computed as im2col + matmul."""

  op = staticmethod(conv4x4s2)


class ConvTranspose4x4s2(_Conv4x4s2Layer):
  """``nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`` in scatter form."""

  op = staticmethod(conv_transpose4x4s2)
