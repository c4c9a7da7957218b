"""Convolutions written as matrix products, and spectral normalisation.

Meta-learning maps the models with ``vmap`` over per-task weights. XLA turns a
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
* :class:`Conv3x3` equals ``nn.Conv(features, (3, 3))`` (stride 1, SAME padding).
* :class:`Dense` equals ``nn.Dense``.

Every layer takes ``spectral=True`` for spectral normalisation (Miyato et al.,
2018) computed as a pure function of the kernel (:func:`spectral_normalize`):
no power-iteration state is carried, so the layers stay pure pytrees functions
that the inner loop can differentiate to any order.

Every op and layer also takes ``compute_dtype`` (default ``None``: the inputs'
own dtype, exactly as before). With ``jnp.bfloat16`` its products round their
operands to bfloat16 and accumulate in float32, in the forward pass and in
every derivative (:func:`matmul`): on CPUs with bf16 matmul units (AVX512-BF16,
AMX) such products run about 2x faster, at bfloat16's precision.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
  "default_kernel_init",
  "matmul",
  "conv4x4s2",
  "conv_transpose4x4s2",
  "conv3x3",
  "top_singular_value",
  "spectral_normalize",
  "Dense",
  "Conv3x3",
  "Conv4x4s2",
  "ConvTranspose4x4s2",
]

default_kernel_init = nn.initializers.lecun_normal()


def matmul(a_MxK: jax.Array, b_KxN: jax.Array, compute_dtype=None) -> jax.Array:
  """``a @ b`` for 2-D operands; with ``compute_dtype``, products in that dtype.

  Args:
    a_MxK, b_KxN: the operands (same floating dtype).
    compute_dtype: ``None`` (``a @ b`` itself) or a narrower float dtype such as
      ``jnp.bfloat16``: both operands are rounded to it, the products are
      accumulated in ``a``'s dtype and the result has ``a``'s dtype. Its
      derivatives of every order are products of the same kind, so a second-order
      meta-gradient runs every matmul in ``compute_dtype`` too.
  """
  if compute_dtype is None:
    return a_MxK @ b_KxN
  if a_MxK.ndim != 2 or b_KxN.ndim != 2:
    raise ValueError(
      f"matmul with compute_dtype takes 2-D operands, got shapes "
      f"{a_MxK.shape} and {b_KxN.shape}; reshape to [M, K] @ [K, N] first."
    )
  return _lowp_matmul(a_MxK, b_KxN, jnp.dtype(compute_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lowp_matmul(a, b, dtype, lhs_t=False):
  """``a @ b`` (or ``a.T @ b`` with ``lhs_t``) from ``dtype`` operands, ``a.dtype`` sums."""
  a_, b_ = a.astype(dtype), b.astype(dtype)
  if lhs_t:
    # Weight gradients contract the rows of both operands. Left to itself XLA's
    # CPU backend folds the transpose into the dot and runs it in its generic
    # dot, which has no bf16 x bf16 -> f32 kernel; a real bf16 copy keeps the
    # product in the fast matmul path.
    a_ = jax.lax.optimization_barrier(a_.T)
  return jnp.matmul(a_, b_, preferred_element_type=a.dtype)


def _lowp_fwd(a, b, dtype, lhs_t):
  return _lowp_matmul(a, b, dtype, lhs_t), (a, b)


def _lowp_bwd(dtype, lhs_t, res, g):
  # jnp's own transpose rule would multiply the float32 cotangent with the
  # narrow operand as float32 products; these keep every order narrow.
  a, b = res
  if lhs_t:  # out = a.T @ b
    return _lowp_matmul(b, g.T, dtype), _lowp_matmul(a, g, dtype)
  return _lowp_matmul(g, b.T, dtype), _lowp_matmul(a, g, dtype, True)


_lowp_matmul.defvjp(_lowp_fwd, _lowp_bwd)


def conv4x4s2(x_NxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array, compute_dtype=None) -> jax.Array:
  """Conv 4x4, stride 2, padding 1 (H, W even) as im2col + one :func:`matmul`."""
  n, h, w, c = x_NxHxWxC.shape
  ho, wo = h // 2, w // 2
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Patch layout (a, b, c) matches kernel.reshape(16 * C, O).
  patches = jnp.concatenate(
    [xp[:, a : a + 2 * ho : 2, b : b + 2 * wo : 2, :] for a in range(4) for b in range(4)], axis=-1
  )
  y = matmul(
    patches.reshape(n * ho * wo, 16 * c), kernel_4x4xCxO.reshape(16 * c, -1), compute_dtype
  )
  return y.reshape(n, ho, wo, -1)


def conv_transpose4x4s2(
  x_NxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array, compute_dtype=None
) -> jax.Array:
  """Transposed conv 4x4, stride 2 (flax padding ((2, 2), (2, 2))): H x W -> 2H x 2W."""
  n, h, w, c = x_NxHxWxC.shape
  o = kernel_4x4xCxO.shape[-1]
  # flax does not flip the kernel; the scatter form needs it flipped:
  # input pixel (i, j) with tap (a, b) lands at padded output (2i + a, 2j + b).
  k = kernel_4x4xCxO[::-1, ::-1]  # [a, b, c, o], a = 2A + R
  k = k.reshape(2, 2, 2, 2, c, o).transpose(4, 0, 2, 1, 3, 5)  # [c, A, B, R, S, o]
  cols = matmul(x_NxHxWxC.reshape(n * h * w, c), k.reshape(c, 16 * o), compute_dtype).reshape(
    n, h, w, 2, 2, 2, 2, o
  )
  out = 0.0
  for big_a in range(2):
    for big_b in range(2):
      part = cols[:, :, :, big_a, big_b].transpose(0, 1, 3, 2, 4, 5)  # [n, i, R, j, S, o]
      out = out + jnp.pad(
        part, ((0, 0), (big_a, 1 - big_a), (0, 0), (big_b, 1 - big_b), (0, 0), (0, 0))
      )
  out = out.reshape(n, 2 * h + 2, 2 * w + 2, o)
  return out[:, 1:-1, 1:-1, :]


def conv3x3(x_NxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, compute_dtype=None) -> jax.Array:
  """Conv 3x3, stride 1, padding 1 as im2col + one matmul (== ``nn.Conv(O, (3, 3))``)."""
  n, h, w, c = x_NxHxWxC.shape
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate(
    [xp[:, a : a + h, b : b + w, :] for a in range(3) for b in range(3)], axis=-1
  )
  y = matmul(patches.reshape(n * h * w, 9 * c), kernel_3x3xCxO.reshape(9 * c, -1), compute_dtype)
  return y.reshape(n, h, w, -1)


# --- spectral normalisation, as a pure function of the weights -------------------


def _power_start(n: int, dtype) -> jax.Array:
  # A fixed pseudo-random start: no state to carry, and (almost surely) not
  # orthogonal to the top singular vector.
  v = jax.random.normal(jax.random.key(20_240_601), (n,), jnp.float32).astype(dtype)
  return v / jnp.linalg.norm(v)


def top_singular_value(w_IxO: jax.Array, n_iter: int = 10) -> jax.Array:
  """Largest singular value of a matrix by ``n_iter`` power iterations.

  Stateless (the iteration starts from the same fixed vector every call) and
  differentiable to any order: derivatives flow through the iterations, so
  they are the exact derivatives of this estimate, which converges to the SVD
  value at rate ``(s2 / s1) ** (2 * n_iter)``.
  """
  v = _power_start(w_IxO.shape[1], w_IxO.dtype)
  u = None
  for _ in range(n_iter):
    u = w_IxO @ v
    u = u / jnp.sqrt(jnp.sum(u * u) + 1e-24)
    v = w_IxO.T @ u
    v = v / jnp.sqrt(jnp.sum(v * v) + 1e-24)
  return u @ (w_IxO @ v)


def spectral_normalize(kernel: jax.Array, n_iter: int = 10) -> jax.Array:
  """``kernel / sigma``, sigma the largest singular value of ``kernel.reshape(-1, out)``.

  The kernel's last axis is the output (flax layout); a convolution kernel
  ``[kh, kw, C_in, C_out]`` is normalised as the ``[kh*kw*C_in, C_out]`` matrix,
  as in Miyato et al. (2018).
  """
  w = kernel.reshape(-1, kernel.shape[-1])
  if w.shape[1] == 1:  # a vector: the exact norm, no iterations needed
    sigma = jnp.sqrt(jnp.sum(w * w) + 1e-24)
  else:
    sigma = top_singular_value(w, n_iter)
  return kernel / sigma


class _Layer(nn.Module):
  """A matmul layer with flax's ``kernel`` / ``bias`` params and optional spectral norm."""

  features: int
  spectral: bool = False
  power_iters: int = 10
  kernel_init: nn.initializers.Initializer = default_kernel_init
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: Any = None  # e.g. jnp.bfloat16: products in bf16 (:func:`matmul`)
  # Subclasses set ``op`` and ``taps`` (class attributes, not module fields).

  @nn.compact
  def __call__(self, x):
    shape = (*self.taps, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    if self.spectral:
      kernel = spectral_normalize(kernel, self.power_iters)
    return self.op(x, kernel.astype(x.dtype), self.compute_dtype) + bias.astype(x.dtype)


def _dense(x, kernel, compute_dtype=None):
  if compute_dtype is None:
    return x @ kernel
  return matmul(x.reshape(-1, x.shape[-1]), kernel, compute_dtype).reshape(
    *x.shape[:-1], kernel.shape[-1]
  )


class Dense(_Layer):
  """``nn.Dense`` with optional spectral normalisation."""

  op = staticmethod(_dense)
  taps = ()


class Conv3x3(_Layer):
  """``nn.Conv(features, (3, 3))`` (stride 1, SAME) as im2col + matmul; optional spectral norm."""

  op = staticmethod(conv3x3)
  taps = (3, 3)


class Conv4x4s2(_Layer):
  """``nn.Conv(features, (4, 4), (2, 2), padding=1)`` computed as im2col + matmul."""

  op = staticmethod(conv4x4s2)
  taps = (4, 4)


class ConvTranspose4x4s2(_Layer):
  """``nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`` in scatter form."""

  op = staticmethod(conv_transpose4x4s2)
  taps = (4, 4)
