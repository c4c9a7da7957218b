"""DiffAugment ops: the reference's semantics, exact gradients, and their place in the GAN steps."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import metagan_jax as mg
from metagan_jax import augment, gan
from tests.helpers import central_difference, random_direction, to64, tree_dot


def _images(n=5, h=28, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, h, h, 1), minval=-1.0, maxval=1.0)


def test_translate_shifts_each_image_by_its_own_offset_and_fills_the_rest():
  x = _images(16)
  key = jax.random.key(3)
  y = np.asarray(augment.translate(key, x, ratio=0.125, fill=-1.0))
  ky, kx = jax.random.split(key)
  dy = np.asarray(jax.random.randint(ky, (16,), -4, 5))  # int(28 * 0.125 + 0.5) = 4 px
  dx = np.asarray(jax.random.randint(kx, (16,), -4, 5))
  assert len(set(zip(dy.tolist(), dx.tolist()))) > 8  # per-image draws
  xn = np.asarray(x)
  for n in range(16):
    want = np.full_like(xn[n], -1.0)
    for i in range(28):
      for j in range(28):
        if 0 <= i - dy[n] < 28 and 0 <= j - dx[n] < 28:
          want[i, j] = xn[n, i - dy[n], j - dx[n]]
    np.testing.assert_array_equal(y[n], want)


def test_cutout_sets_one_clipped_square_per_image_to_the_fill():
  x = _images(64) * 0.5  # never exactly -1
  y = np.asarray(augment.cutout(jax.random.key(4), x, ratio=0.5, fill=-1.0))
  cut = y == -1.0
  assert np.array_equal(y[~cut], np.asarray(x)[~cut])
  for n in range(64):
    rows, cols = np.nonzero(cut[n, :, :, 0])
    if rows.size:  # a rectangle, at most 14 x 14, clipped at the borders
      hgt, wid = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
      assert rows.size == hgt * wid and hgt <= 14 and wid <= 14
  sizes = cut.reshape(64, -1).sum(1)
  assert sizes.max() == 196 and sizes.min() < 196  # full boxes inside, clipped ones at edges


def test_random_affine_is_translate_without_rotation_or_scaling():
  x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1), minval=-1.0, maxval=1.0)
  k = jax.random.key(0)
  np.testing.assert_array_equal(
    augment.random_affine(k, x, shift=0.075), augment.translate(k, x, ratio=0.075)
  )


def test_random_affine_rotates_about_the_centre_after_its_shift():
  """Known answer: a thick horizontal bar through the centre, shifted by (dy, dx) and turned
  by theta (both drawn from the key as the op draws them), lies along c + d + r (-sin, cos)."""
  n, h = 8, 29
  bar = np.full((n, h, h, 1), -1.0, np.float32)
  bar[:, 13:16] = 1.0
  key = jax.random.key(3)
  out = np.asarray(augment.random_affine(key, jnp.asarray(bar), shift=0.075, rotate=30.0))
  ky, kx, kr, _ = jax.random.split(key, 4)
  s = int(h * 0.075 + 0.5)
  dy = np.asarray(jax.random.randint(ky, (n,), -s, s + 1))
  dx = np.asarray(jax.random.randint(kx, (n,), -s, s + 1))
  theta = np.deg2rad(np.asarray(jax.random.uniform(kr, (n,), minval=-30.0, maxval=30.0)))
  assert np.abs(np.rad2deg(theta)).max() > 10  # some draws turn the bar visibly
  for i in range(n):
    for r in (-9, -5, 5, 9):
      y = int(round(14 + dy[i] - r * np.sin(theta[i])))
      x = int(round(14 + dx[i] + r * np.cos(theta[i])))
      assert out[i, y, x, 0] > 0.0, (i, r)  # on the turned bar
      y_off = int(round(14 + dy[i] + 6 * np.cos(theta[i])))  # 6 px off the bar's axis
      x_off = int(round(14 + dx[i] + 6 * np.sin(theta[i])))
      assert out[i, y_off, x_off, 0] < -0.9, (i, r)
  # near-zero rotation and scaling: the shift alone (as translate), up to interpolation
  near = augment.random_affine(key, jnp.asarray(bar), 0.075, 1e-6, 1e-6)
  np.testing.assert_allclose(near, augment.translate(key, jnp.asarray(bar), 0.075), atol=1e-4)


def test_random_affine_scales_about_the_centre_and_fills_from_outside():
  key = jax.random.key(3)
  white = jnp.ones((8, 28, 28, 1))
  small = np.asarray(augment.random_affine(key, white, 0.0, 0.0, 0.5))
  zoom = np.asarray(jax.random.uniform(jax.random.split(key, 4)[3], (8,), minval=0.5, maxval=1.5))
  shrunk, enlarged = zoom < 0.9, zoom > 1.0  # (at 0.9 the corner reads 1.5 px outside)
  assert shrunk.any() and enlarged.any()
  np.testing.assert_array_equal(small[shrunk, 0, 0, 0], -1.0)  # the corner reads outside
  np.testing.assert_array_equal(small[enlarged, 0, 0, 0], 1.0)  # enlarged: it stays inside
  assert np.all(small[:, 14, 14, 0] == 1.0)
  with pytest.raises(ValueError, match="scale=1.0"):
    augment.random_affine(key, white, 0.1, 0.0, 1.0)


def test_ops_are_differentiable_with_exact_gradients():
  with jax.enable_x64(True):
    x = to64(_images(3, 12))
    for policy in ("translation", "cutout", "translation,cutout"):
      f = lambda v, policy=policy: augment.diff_augment(jax.random.key(5), v, policy) ** 2
      check_grads(f, (x,), order=2, modes=("fwd", "rev"))


def test_policy_is_checked_and_empty_is_identity():
  x = _images(2)
  assert augment.diff_augment(jax.random.key(0), x, "") is x
  with pytest.raises(ValueError, match="'flip'"):
    augment.parse_policy("translation,flip")
  with pytest.raises(ValueError, match="unknown op"):
    mg.AdaptConfig(mg.models.fsgan28(), augment="color")
  with pytest.raises(ValueError, match="unknown op"):
    gan.GanTrainConfig(mg.models.fsgan28(), augment="rotate")


class _SmoothG(nn.Module):
  @nn.compact
  def __call__(self, z):
    return jnp.tanh(nn.Dense(12 * 12)(z)).reshape(-1, 12, 12, 1)


class _SmoothD(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Conv(3, (3, 3), strides=(2, 2))(x))
    return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]


def _smooth_image_gan():
  # Finite differences of a meta-objective need a smooth GAN: after one inner gradient
  # step a ReLU network's objective jumps wherever an activation pattern changes.
  return mg.models.GanModel("smooth12", 3, (12, 12, 1), _SmoothG(), _SmoothD())


def test_maml_meta_gradient_through_augmented_inner_loop_matches_finite_differences():
  with jax.enable_x64(True):
    model = _smooth_image_gan()
    ac = mg.AdaptConfig(
      model, inner_steps=2, inner_lr=0.05, loss="wgan-gp", augment="translation,cutout"
    )
    config = mg.MetaConfig(ac, algorithm="maml")
    params = to64(model.init(jax.random.key(0)))
    support = to64(_images(3, 12, seed=1))
    query = to64(_images(3, 12, seed=2))
    key = jax.random.key(7)
    objective = jax.jit(lambda p: mg.maml_objective(p, support, query, key, config)[0])
    for row in (0, 1):
      v = random_direction(jax.random.key(10 + row), params)
      an = tree_dot(jax.grad(lambda p: objective(p)[row])(params), v)
      fd = central_difference(lambda p: objective(p)[row], params, v)
      assert abs(fd - an) / abs(an) < 1e-5, (row, float(fd), float(an))
    # and augmentation is on: the objective differs from the unaugmented one
    plain = mg.MetaConfig(dataclasses.replace(ac, augment=""), algorithm="maml")
    other = mg.maml_objective(params, support, query, key, plain)[0]
    assert not np.allclose(np.asarray(objective(params)), np.asarray(other))


def test_pretraining_step_with_augmentation_is_deterministic_and_differs_from_none():
  model = _smooth_image_gan()
  real = _images(4, 12, seed=3)

  def run(policy, seed):
    cfg = gan.GanTrainConfig(
      model, d_opt=optax.adam(1e-3), g_opt=optax.adam(1e-3), d_steps=1, augment=policy
    )
    state = gan.init(jax.random.key(0), cfg)
    state, _ = jax.jit(functools.partial(gan.train_step, config=cfg))(
      state, real, jax.random.key(seed)
    )
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])

  a, b = run("translation,cutout", 1), run("translation,cutout", 1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, run("", 1))
  assert not np.allclose(a, run("translation,cutout", 2))
