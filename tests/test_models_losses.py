"""Models produce the documented shapes; losses and penalties have correct values and derivatives."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import metagan_jax as mg


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_dcgan28_is_exactly_the_benchmark_architecture():
  model = mg.models.dcgan28()
  p = model.init(jax.random.key(0))
  shapes = jax.tree.map(jnp.shape, p)
  assert shapes.g == {
    "fc": {"kernel": (64, 3136), "bias": (3136,)},
    "deconv1": {"kernel": (4, 4, 64, 32), "bias": (32,)},
    "deconv2": {"kernel": (4, 4, 32, 1), "bias": (1,)},
  }
  assert shapes.d == {
    "conv1": {"kernel": (4, 4, 1, 32), "bias": (32,)},
    "conv2": {"kernel": (4, 4, 32, 64), "bias": (64,)},
    "fc": {"kernel": (3136, 1), "bias": (1,)},
  }
  x = model.generate(p.g, model.sample_z(jax.random.key(1), 3))
  assert x.shape == (3, 28, 28, 1) and float(jnp.max(jnp.abs(x))) <= 1.0
  assert model.discriminate(p.d, x).shape == (3,)


@pytest.mark.parametrize(
  "name,shape", [("dcgan32", (32, 32, 3)), ("dcgan64", (64, 64, 3)), ("mlp", (2,))]
)
def test_other_models_shapes_and_no_state(name, shape):
  model = mg.get_model(name)
  # jitted: flax's eager init and the matmul convs op by op take ~10 s a model here
  variables = jax.jit(model.generator.init)(jax.random.key(0), jnp.zeros((1, model.z_dim)))
  assert set(variables) == {"params"}  # no batch_stats: the inner loop stays pure
  p = jax.jit(model.init)(jax.random.key(0))
  x = jax.jit(model.generate)(p.g, model.sample_z(jax.random.key(1), 2))
  assert x.shape == (2, *shape)
  assert jax.jit(model.discriminate)(p.d, x).shape == (2,)


def test_plain_loss_values():
  r, f = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
  sp = lambda x: np.log1p(np.exp(x))
  np.testing.assert_allclose(
    mg.losses.ns_d_loss(r, f), np.mean(sp(-np.array(r))) + np.mean(sp(np.array(f))), rtol=1e-6
  )
  np.testing.assert_allclose(mg.losses.ns_g_loss(f), np.mean(sp(-np.array(f))), rtol=1e-6)
  np.testing.assert_allclose(mg.losses.hinge_d_loss(r, f), (0 + 2) / 2 + (1.5 + 0) / 2, rtol=1e-6)
  np.testing.assert_allclose(mg.losses.wasserstein_d_loss(r, f), -1.25 - 0.5, rtol=1e-6)
  np.testing.assert_allclose(mg.losses.wasserstein_g_loss(f), 1.25, rtol=1e-6)


def test_penalties_on_a_linear_critic_have_closed_forms():
  w = jnp.array([3.0, 4.0])  # |grad| = 5 everywhere
  disc = lambda x: x @ w
  real = jax.random.normal(jax.random.key(0), (6, 2))
  fake = jax.random.normal(jax.random.key(1), (6, 2))
  np.testing.assert_allclose(
    mg.losses.gradient_penalty(disc, real, fake, jax.random.key(2)), 16.0, rtol=1e-5
  )
  np.testing.assert_allclose(mg.losses.r1_penalty(disc, real), 25.0, rtol=1e-6)


def test_penalty_gradients_are_correct_to_second_order():
  with jax.enable_x64(True):
    model = mg.models.mlp(data_dim=2, z_dim=2, hidden=(5,), activation="tanh")
    d = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(0)).d)
    real = jax.random.normal(jax.random.key(1), (4, 2), jnp.float64)
    fake = jax.random.normal(jax.random.key(2), (4, 2), jnp.float64)
    for loss in [mg.get_loss("wgan-gp"), mg.get_loss("ns-r1"), mg.get_loss("hinge")]:
      f = lambda d_, fk: loss.d_objective(
        lambda x: model.discriminate(d_, x), real, fk, jax.random.key(3)
      )
      check_grads(jax.jit(f), (d, fake), order=2, modes=["rev"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["hinge", "wasserstein", "wgan-gp", "ns-r1"])
def test_every_loss_runs_second_order_maml_with_finite_gradients(loss):
  model = mg.models.mlp(data_dim=2, z_dim=2, hidden=(8,))
  config = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=2, loss=loss))
  state = mg.init(jax.random.key(0), config)
  tasks, _ = mg.toy.RingMixtures().sample_tasks(jax.random.key(1), 2, 4, 4)
  grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(
    state.params, tasks, jax.random.key(2)
  )
  norms = [float(jnp.linalg.norm(x)) for x in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


def test_fsgan28_nearest_upsampling_is_repeat_then_3x3_conv():
  model = mg.models.fsgan28(g_width=16, d_width=8, up="nearest", g_norm="none", mapping_layers=0)
  p = jax.jit(model.init)(jax.random.key(0))
  syn = p.g["synthesis"]
  assert set(syn) == {"fc", "upconv1", "upconv2", "out"}
  z = model.sample_z(jax.random.key(1), 2)
  # by hand: Dense -> 7x7x32, then twice [nearest x2, SAME 3x3 conv, ReLU], then out conv, tanh
  conv = lambda x, l: (
    jax.lax.conv_general_dilated(
      x, l["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    + l["bias"]
  )
  h = jax.nn.relu(z @ syn["fc"]["kernel"] + syn["fc"]["bias"]).reshape(2, 7, 7, 32)
  for name in ("upconv1", "upconv2"):
    h = jax.nn.relu(conv(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2), syn[name]))
  want = jnp.tanh(conv(h, syn["out"]))
  np.testing.assert_allclose(jax.jit(model.generate)(p.g, z), want, atol=1e-4)
  with pytest.raises(ValueError, match="up='bilinear'"):
    mg.models.fsgan28(up="bilinear")


def test_truncation_interpolates_between_the_mean_image_and_plain_samples():
  model = mg.models.fsgan28()
  # Each of the model's calls jitted: op by op, this test compiled every primitive (42 s).
  generate, synthesize, map_latents = (
    jax.jit(model.generate),
    jax.jit(model.synthesize),
    jax.jit(model.map_latents),
  )
  truncated = jax.jit(model.generate_truncated)
  g = model.init(jax.random.key(0)).g
  z = model.sample_z(jax.random.key(1), 5)
  z_avg = model.sample_z(jax.random.key(2), 256)
  x = generate(g, z)
  np.testing.assert_allclose(synthesize(g, map_latents(g, z)), x, atol=1e-6)
  np.testing.assert_allclose(truncated(g, z, 1.0, z_avg), x, atol=1e-5)
  # psi = 0: every latent draws the image at the mapped mean w_avg
  w_avg = map_latents(g, z_avg).mean(0)
  x0 = truncated(g, z, 0.0, z_avg)
  np.testing.assert_allclose(x0, jnp.broadcast_to(synthesize(g, w_avg[None]), x0.shape), atol=1e-6)
  # in between: w moves linearly toward w_avg, so the synthesis input is exactly that
  w_half = w_avg + 0.5 * (map_latents(g, z) - w_avg)
  np.testing.assert_allclose(truncated(g, z, 0.5, z_avg), synthesize(g, w_half), atol=1e-6)
  assert float(jnp.abs(truncated(g, z, 0.5, z_avg) - x).max()) > 1e-2
  # differentiable in psi (the sampling rule could be meta-learned); float64 finite differences
  with jax.enable_x64(True):
    g64, z64, za64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (g, z[:2], z_avg[:16]))
    check_grads(
      jax.jit(lambda p: model.generate_truncated(g64, z64, p, za64).sum()),
      (0.7,),
      order=1,
      modes=["rev"],
    )


def test_truncation_without_a_mapping_shrinks_z_toward_its_mean():
  model = mg.models.dcgan28()
  g = model.init(jax.random.key(0)).g
  z = model.sample_z(jax.random.key(1), 3)
  z_avg = model.sample_z(jax.random.key(2), 64)
  assert model.map_latents(g, z) is z
  want = model.generate(g, z_avg.mean(0) + 0.6 * (z - z_avg.mean(0)))
  np.testing.assert_allclose(model.generate_truncated(g, z, 0.6, z_avg), want, atol=1e-6)
