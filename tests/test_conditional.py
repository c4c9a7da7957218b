"""Support-conditioned pairs: ``G(z, support)`` and ``D(x, support)`` through every loop.

A tiny conditional pair of pure functions on 2-D vectors (a pooled set encoder in G's
parameters, a pair critic that sees ``x`` beside its set's mean) keeps the float64 finite
differences exact; ``cfsgan28`` is checked for shapes, T = 0 sampling and a training step.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import metagan_jax as mg
from metagan_jax import GanParams, gan
from tests.helpers import (
  central_difference,
  random_direction,
  tiny_model,
  tiny_tasks,
  to64,
  tree_dot,
  tree_max_rel_err,
)

Z, X, H, E = 3, 2, 8, 4  # latent, data, hidden and set-code sizes


def _dense(key, din, dout):
  return {"kernel": 0.5 * jax.random.normal(key, (din, dout)), "bias": jnp.zeros((dout,))}


def _apply(p, x):
  return x @ p["kernel"] + p["bias"]


def g_init(key):
  k = jax.random.split(key, 3)
  return {"encoder": _dense(k[0], X, E), "fc0": _dense(k[1], Z + E, H), "fc1": _dense(k[2], H, X)}


def g_apply(p, z_NxZ, sets_NxMxX):
  code_NxE = jnp.tanh(_apply(p["encoder"], sets_NxMxX)).mean(axis=1)  # pooled over the set
  h = jnp.tanh(_apply(p["fc0"], jnp.concatenate([z_NxZ, code_NxE], axis=-1)))
  return _apply(p["fc1"], h)


def d_init(key):
  k0, k1 = jax.random.split(key)
  return {"fc0": _dense(k0, 2 * X, H), "fc1": _dense(k1, H, 1)}


def d_apply(p, x_NxX, sets_NxMxX):
  h = jnp.tanh(_apply(p["fc0"], jnp.concatenate([x_NxX, sets_NxMxX.mean(axis=1)], axis=-1)))
  return _apply(p["fc1"], h)[:, 0]


def cond_model():
  return mg.GanModel.from_functions(
    g_init=g_init,
    g_apply=g_apply,
    d_init=d_init,
    d_apply=d_apply,
    z_dim=Z,
    data_shape=(X,),
    conditional=True,
    name="tiny-cond",
  )


def _config(model, algorithm="maml", **kw):
  kw.setdefault("inner_steps", 2)
  kw.setdefault("inner_lr", 0.1)
  return mg.MetaConfig(mg.AdaptConfig(model, **kw), algorithm=algorithm)


def test_leave_one_out_sets_leave_out_their_own_row():
  s = jnp.arange(4.0)[:, None] * jnp.ones((4, 2))
  sets = mg.leave_one_out_sets(s)
  assert sets.shape == (4, 3, 2)
  for i in range(4):
    assert sorted(np.asarray(sets[i, :, 0]).tolist()) == [j for j in range(4) if j != i]
  np.testing.assert_array_equal(mg.leave_one_out_sets(s[:1]), s[:1, None])


def test_second_order_meta_gradient_matches_finite_differences_for_both_players_and_encoder():
  with jax.enable_x64(True):
    config = _config(cond_model())
    params = to64(mg.init(jax.random.key(0), config).params)
    tasks = tiny_tasks(jax.random.key(100))
    key = jax.random.key(200)
    (task_key,) = jax.random.split(key, 1)  # meta_gradients' key for task 0 of T=1
    grads, _ = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
    objective = jax.jit(
      lambda p: mg.maml_objective(p, tasks.support[0], tasks.query[0], task_key, config)[0]
    )
    zero = lambda t: jax.tree.map(jnp.zeros_like, t)
    enc_only = lambda t: {k: (v if k == "encoder" else zero(v)) for k, v in t.items()}
    cases = [(0, "d"), (1, "g"), (1, "encoder")]  # row 0: L_D (D's own), row 1: L_G (G's own)
    for row, part in cases:
      v = random_direction(jax.random.key(1000 + row + len(part)), params)
      v = GanParams(
        g={"g": v.g, "encoder": enc_only(v.g), "d": zero(v.g)}[part],
        d=v.d if part == "d" else zero(v.d),
      )
      fd = central_difference(lambda p, row=row: objective(p)[row], params, v)
      an = tree_dot(grads, v)
      assert abs(an) > 1e-8, part  # the support reaches this part's meta-gradient
      assert abs(fd - an) / abs(an) < 1e-4, (part, float(fd), float(an))


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_vmap_over_tasks_equals_python_loop(algorithm):
  config = _config(cond_model(), algorithm)
  with jax.enable_x64(True):
    params = to64(mg.init(jax.random.key(0), config).params)
    tasks = tiny_tasks(jax.random.key(1), t=3)
    key = jax.random.key(2)
    grads, aux = jax.jit(functools.partial(mg.meta_gradients, config=config))(params, tasks, key)
    one_task = jax.jit(functools.partial(mg.per_task_gradient, config=config))
    per_task = [
      one_task(params, tasks.support[i], tasks.query[i], k)
      for i, k in enumerate(jax.random.split(key, 3))
    ]
  loop = jax.tree.map(lambda *g: sum(g) / 3, *[p[0] for p in per_task])
  assert tree_max_rel_err(grads, loop) < 1e-6
  np.testing.assert_allclose(aux["query_losses"], jnp.stack([p[1] for p in per_task]), rtol=1e-9)


def test_players_that_ignore_the_support_equal_the_unconditional_pair():
  # The conditional plumbing (sets, tiling, query sets) changes nothing else in the algorithms.
  plain = tiny_model()
  z0, x0 = jnp.zeros((1, Z)), jnp.zeros((1, X))
  ignoring = mg.GanModel.from_functions(
    g_init=lambda k: plain.generator.init(k, z0)["params"],
    g_apply=lambda p, z, sets: plain.generator.apply({"params": p}, z),
    d_init=lambda k: plain.discriminator.init(k, x0)["params"],
    d_apply=lambda p, x, sets: plain.discriminator.apply({"params": p}, x),
    z_dim=Z,
    data_shape=(X,),
    conditional=True,
  )
  tasks = tiny_tasks(jax.random.key(1), t=2, dtype=jnp.float32)
  for algorithm in ("maml", "reptile"):
    c_plain, c_cond = _config(plain, algorithm), _config(ignoring, algorithm)
    s_plain, s_cond = mg.init(jax.random.key(0), c_plain), mg.init(jax.random.key(0), c_cond)
    s_plain, m_plain = jax.jit(functools.partial(mg.meta_step, config=c_plain))(
      s_plain, tasks, jax.random.key(2)
    )
    s_cond, m_cond = jax.jit(functools.partial(mg.meta_step, config=c_cond))(
      s_cond, tasks, jax.random.key(2)
    )
    assert tree_max_rel_err((s_cond.params, m_cond), (s_plain.params, m_plain)) < 1e-6, algorithm


def test_zero_steps_return_the_initialisation_and_sample_from_the_support_alone():
  model = mg.models.cfsgan28(g_width=16, d_width=8, w_dim=16, code_dim=8)
  params = model.init(jax.random.key(0))
  support = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), minval=-1.0, maxval=1.0)
  config = mg.AdaptConfig(model, inner_steps=0)
  adapted, aux = mg.adapt_with_aux(params, support, jax.random.key(2), config)
  for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert aux["d_loss"].shape == (0,)
  # T = 0 sampling is the pre-trained generator's forward pass on the broadcast support.
  z = model.sample_z(jax.random.key(3), 5)
  x = jax.jit(model.generate)(adapted.g, z, support)
  sets = jnp.broadcast_to(support[None], (5, *support.shape))
  forward = jax.jit(lambda g, z, sets: model.generator.apply({"params": g}, z, sets))
  np.testing.assert_array_equal(x, forward(params.g, z, sets))
  assert x.shape == (5, 28, 28, 1)
  # ...and it depends on the support: another class's images draw other samples.
  other = jax.jit(model.generate)(adapted.g, z, -support)
  assert float(jnp.abs(other - x).max()) > 1e-3
  logits = jax.jit(model.discriminate)(params.d, x, support)
  assert logits.shape == (5,)


def test_cfsgan28_adapts_and_its_meta_gradient_reaches_the_encoder():
  model = mg.models.cfsgan28(g_width=16, d_width=8, w_dim=16, code_dim=8)
  config = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=1, inner_lr=0.05), algorithm="fomaml")
  state = mg.init(jax.random.key(0), config)
  x = jax.random.uniform(jax.random.key(1), (2, 6, 28, 28, 1), minval=-1.0, maxval=1.0)
  tasks = mg.Tasks(support=x[:, :3], query=x[:, 3:])
  grads, aux = jax.jit(functools.partial(mg.meta_gradients, config=config))(
    state.params, tasks, jax.random.key(2)
  )
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads.g["encoder"]["conv1"]["kernel"]).max()) > 0
  assert np.isfinite(np.asarray(aux["query_losses"])).all()


def test_reconstruction_term_adds_exactly_its_weighted_l1_to_g_loss():
  model = cond_model()
  params = model.init(jax.random.key(0))
  support = jax.random.normal(jax.random.key(1), (3, X))
  base = mg.AdaptConfig(model, inner_steps=1, inner_lr=0.1)
  with_recon = dataclasses.replace(base, recon_weight=0.7)
  _, aux0 = mg.adapt_with_aux(params, support, jax.random.key(2), base)
  _, aux1 = mg.adapt_with_aux(params, support, jax.random.key(2), with_recon)
  # G's first update sees the same D update in both: the difference is the term alone.
  noise = mg.inner_noise(jax.random.key(2), base, 3)
  sets = mg.leave_one_out_sets(support)
  want = 0.7 * jnp.mean(jnp.abs(model.generate(params.g, noise.z[0, 1], sets) - support))
  np.testing.assert_allclose(aux1["g_loss"] - aux0["g_loss"], [want], rtol=1e-5)
  np.testing.assert_array_equal(aux1["d_loss"], aux0["d_loss"])


def test_mode_seeking_term_is_msgan_ratio_and_changes_only_g():
  x1, x2 = jnp.ones((2, 3)), jnp.zeros((2, 3))
  z1, z2 = jnp.full((2, 4), 2.0), jnp.zeros((2, 4))
  np.testing.assert_allclose(mg.losses.mode_seeking(x1, x2, z1, z2), 1.0 / (0.5 + 1e-5))
  model = cond_model()
  params = model.init(jax.random.key(0))
  support = jax.random.normal(jax.random.key(1), (3, X))
  base = mg.AdaptConfig(model, inner_steps=2, inner_lr=0.1)
  _, aux0 = mg.adapt_with_aux(params, support, jax.random.key(2), base)
  ms = dataclasses.replace(base, mode_seeking_weight=0.5)
  _, aux1 = mg.adapt_with_aux(params, support, jax.random.key(2), ms)
  assert float(aux1["g_loss"][0] - aux0["g_loss"][0]) > 0  # a positive term was added
  np.testing.assert_array_equal(aux1["d_loss"][0], aux0["d_loss"][0])


def test_conditional_pretraining_step_uses_the_sets_and_the_named_terms():
  model = cond_model()
  imgs = jax.random.normal(jax.random.key(1), (4, 4, X))
  real, sets = imgs[:, 0], imgs[:, 1:]  # each real image's set: 3 others of its class
  states = {}
  for name, kw in (
    ("plain", {}),
    ("recon", {"recon_weight": 1.0}),
    ("ms", {"mode_seeking_weight": 0.1}),
  ):
    cfg = gan.GanTrainConfig(model, loss="ns", d_steps=1, **kw)
    step = jax.jit(functools.partial(gan.train_step, config=cfg))
    state = gan.init(jax.random.key(0), cfg)
    states[name], metrics = step(state, real, jax.random.key(2), support=sets)
    assert np.isfinite(float(metrics["g_loss"]))
    states[name + "_again"], _ = step(state, real, jax.random.key(2), support=sets)
  for name in ("plain", "recon", "ms"):  # pure: same inputs, same numbers
    for a, b in zip(jax.tree.leaves(states[name]), jax.tree.leaves(states[name + "_again"])):
      np.testing.assert_array_equal(a, b)
  g = lambda n: states[n].params.g["fc1"]["kernel"]
  assert float(jnp.abs(g("recon") - g("plain")).max()) > 0
  assert float(jnp.abs(g("ms") - g("plain")).max()) > 0
  d = lambda n: states[n].params.d["fc1"]["kernel"]
  np.testing.assert_array_equal(d("recon"), d("plain"))  # D's update precedes G's terms


def test_bad_support_gives_clear_errors():
  model = cond_model()
  params = model.init(jax.random.key(0))
  z = jnp.zeros((2, Z))
  with pytest.raises(ValueError, match="is conditional: pass support"):
    model.generate(params.g, z)
  with pytest.raises(ValueError, match=r"support has shape \(2, 5\)"):
    model.generate(params.g, z, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="support set is empty"):
    model.generate(params.g, z, jnp.zeros((0, X)))
  config = mg.AdaptConfig(model, inner_steps=1)
  with pytest.raises(ValueError, match=r"support has shape \(0, 2\)"):
    mg.adapt(params, jnp.zeros((0, X)), jax.random.key(0), config)
  with pytest.raises(ValueError, match=r"support has shape \(3, 3\)"):
    mg.adapt(params, jnp.zeros((3, 3)), jax.random.key(0), config)
  with pytest.raises(ValueError, match="n_fake=4 must be a multiple of the support size K = 3"):
    mg.adapt(params, jnp.zeros((3, X)), jax.random.key(0), dataclasses.replace(config, n_fake=4))
  plain = tiny_model()
  with pytest.raises(ValueError, match="is unconditional"):
    plain.generate(plain.init(jax.random.key(0)).g, z, jnp.zeros((3, X)))
  with pytest.raises(ValueError, match="recon_weight needs a conditional model"):
    mg.AdaptConfig(plain, recon_weight=1.0)
  with pytest.raises(ValueError, match="calling the generator"):
    mg.GanModel.from_functions(
      g_init=g_init,
      g_apply=lambda p, z: z,  # takes no support
      d_init=d_init,
      d_apply=d_apply,
      z_dim=Z,
      data_shape=(X,),
      conditional=True,
    )


def val_support(config, k: int = 4) -> np.ndarray:
  from experiments import train_lib  # pylint: disable=g-import-not-at-top

  return np.asarray(train_lib.load_split(config, "val", verbose=False).images[0][:k], np.float32)


def test_conditional_pretraining_run_and_its_validation_scores(tmp_path):
  """experiments/cond_pilot.py on a tiny config: one-class tasks of a target and its set, a
  grid of validation supports and T = 0 samples, the protocol's measures beside real and copy;
  then the DAGAN protocol's command on that run, and ``load_run`` of the same pre-training. One test, so the steps compiled for one part serve the next."""
  from experiments import cond_pilot, train_lib  # pylint: disable=g-import-not-at-top
  from experiments.configs import cond_pilot as cfg  # pylint: disable=g-import-not-at-top
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top

  c = cfg.get_config()
  c.model_kw.update(g_width=16, d_width=8, w_dim=16, code_dim=8)
  c.pretrain.steps, c.pretrain.batch = 2, 4
  c.train.ckpt_every = c.train.sample_every = c.train.log_every = 2
  c.features = tiny.get_config().features
  c.features.cache_dir = str(tmp_path / "cache")
  c.eval.update(tune_classes=3, n_gen=8, n_aug=4, classifier_steps=10, grid_classes=2)
  split = train_lib.load_split(c, "train", verbose=False)
  batch = train_lib.Run(c, "pretrain", 0, split).batch(0)
  assert batch.support.shape == (4, 4, 28, 28, 1)  # 4 classes: a target and 3 set images each
  scores = cond_pilot.run(c, str(tmp_path / "work"), progress=False)
  with Image.open(tmp_path / "work" / "val_t0.png") as im:  # 2 classes x (4 + 1 + 8) images
    assert im.size[0] * 2 * 28 == im.size[1] * 13 * 28
  for row in ("t0", "copy", "real"):
    assert 0.0 <= scores[row]["fidelity"] <= 1.0 and np.isfinite(scores[row]["kid"])
  assert scores["classes"] == 3 and scores["n_gen"] == 8
  # the DAGAN protocol's command on that run: T = 0 (one forward pass) and T = 1 (adapted)
  from experiments import dagan as dagan_cmd  # pylint: disable=g-import-not-at-top
  from experiments.configs import dagan as dagan_cfg  # pylint: disable=g-import-not-at-top
  from experiments.protocol import dagan  # pylint: disable=g-import-not-at-top

  d = dagan_cfg.tiny_config()
  d.runs = f"cond={tmp_path / 'work'}"
  d.dagan.sample_steps = "0,1"
  out = dagan_cmd.run(d, str(tmp_path / "dagan"))
  assert [(r["name"], r["T"]) for r in out["rows"]] == [("cond", 0), ("cond", 1)]
  for r in out["rows"]:
    assert set(r["acc"]) == {a.name for a in dagan.fair_arms()}
    assert all(len(v) == 3 for v in r["acc"].values())
    assert r["acc"]["real"] == out["rows"][0]["acc"]["real"]  # one real arm for every row
    assert 0.0 <= r["pool"]["fidelity"] <= 1.0 and r["pool"]["diversity"] > 0
    assert len(r["curve"]["aug_gen"][0]) == d.dagan.curve_points
  assert (tmp_path / "dagan" / "cond_T0.png").exists() and (
    tmp_path / "dagan" / "cond_T1.png"
  ).exists()
  with open(tmp_path / "dagan" / "dagan.md") as f:
    assert len([ln for ln in f if ln.startswith("| cond |")]) == 2
  # a second call, with the selection filter: the arms without samples reused
  d.dagan.update(sample_steps="0", psi=0.5, filter="prototype")
  again = dagan_cmd.run(d, str(tmp_path / "dagan"))
  assert again["rows"][0]["acc"]["real"] == out["rows"][0]["acc"]["real"]
  assert again["rows"][0]["psi"] == 0.5 and "(psi 0.5)" in dagan_cmd.markdown(again)
  kept_f = again["rows"][0]
  assert 0.0 <= kept_f["pool_filtered"]["acceptance"] <= 1.0
  assert {"real_gen_filtered", "aug_gen_filtered"} <= set(kept_f["acc"])
  assert "aug_gen_filtered vs aug" in kept_f["tests"] and "(filtered)" in dagan_cmd.markdown(again)
  # rows a call finished are kept in dagan.json and not made again (a killed call resumes)
  gen = dagan.generated_pools
  try:
    dagan.generated_pools = None  # a row made again would call it
    kept = dagan_cmd.run(d, str(tmp_path / "dagan"))
  finally:
    dagan.generated_pools = gen
  assert kept["rows"][0]["acc"] == again["rows"][0]["acc"]

  # The same pre-training as a run folder of experiments/omniglot.py (its conditional
  # `transfer`); load_run samples it at T = 0 (one forward pass from the support) and adapted
  import json  # pylint: disable=g-import-not-at-top

  from experiments import omniglot  # pylint: disable=g-import-not-at-top

  # cond_short.py (conditional Reptile) reuses a pilot's pre-training folder as its own
  # train/pretrain_s<seed>: its pre-training fields must be the pilot recipe's exactly.
  from experiments.configs import cond_short  # pylint: disable=g-import-not-at-top

  meta_cfg, pilot = cond_short.get_config(), cfg.get_config()
  pilot.pretrain.update(steps=3000, mismatch_weight=1.0)  # research log 30's recipe l
  assert meta_cfg.pretrain.to_dict() == pilot.pretrain.to_dict()
  assert meta_cfg.model == pilot.model and meta_cfg.model_kw.to_dict() == pilot.model_kw.to_dict()
  c.methods = "transfer"
  run_dir = tmp_path / "run"
  omniglot.train_all(c, str(run_dir), progress=False)
  with open(run_dir / "config.json", "w") as f:  # train_and_evaluate writes it before training
    json.dump(c.to_dict(), f)
  run = mg.load_run(run_dir, "transfer")
  assert run.model.conditional
  sup = val_support(c)
  _, k_z = run.keys(3)
  want = run.model.generate(run.meta_params.g, run.model.sample_z(k_z, 8), sup)
  np.testing.assert_allclose(run.generate(sup, n=8, seed=3, steps=0), want, atol=1e-5)
  assert np.abs(run.generate(sup, n=8, seed=3, steps=1) - want).max() > 1e-3


def test_mismatch_term_scores_real_images_beside_their_own_set_above_another_rows():
  model = cond_model()
  imgs = jax.random.normal(jax.random.key(1), (4, 4, X))
  real, sets = imgs[:, 0], imgs[:, 1:]
  base = gan.GanTrainConfig(model, loss="ns", d_steps=1, ema=0.0)
  cfg = dataclasses.replace(base, mismatch_weight=0.5)
  state = gan.init(jax.random.key(0), base)
  _, m0 = jax.jit(functools.partial(gan.train_step, config=base))(
    state, real, jax.random.key(2), support=sets
  )
  _, m1 = jax.jit(functools.partial(gan.train_step, config=cfg))(
    state, real, jax.random.key(2), support=sets
  )
  right = model.discriminate(state.params.d, real, sets)
  wrong = model.discriminate(state.params.d, real, jnp.roll(sets, 1, axis=0))
  want = 0.5 * jnp.mean(jax.nn.softplus(wrong - right))
  np.testing.assert_allclose(m1["d_loss"] - m0["d_loss"], want, rtol=1e-5)
  with pytest.raises(ValueError, match="mismatch_weight needs a conditional model"):
    gan.GanTrainConfig(tiny_model(), mismatch_weight=1.0)


def _tiny_cfsgan28(**kw):
  return mg.models.cfsgan28(g_width=16, d_width=8, w_dim=16, code_dim=8, **kw)


def test_class_head_adds_its_cross_entropy_to_d_on_real_and_to_g_on_fakes():
  """GanTrainConfig.class_weight: D's loss gains w * CE(head(real), labels) and G's loss
  w * CE(head(fake), labels) under the updated D; a head that sees x alone, and D's other
  parameters and logits as without a head."""
  model, plain = _tiny_cfsgan28(num_classes=5), _tiny_cfsgan28()
  p_head, p_plain = model.init(jax.random.key(0)), plain.init(jax.random.key(0))
  assert set(p_head.d) == set(p_plain.d) | {"cls"} and p_head.d["cls"]["kernel"].shape == (16, 5)
  for a, b in zip(jax.tree.leaves(p_plain), jax.tree.leaves((p_head.g, {**p_head.d, "cls": {}}))):
    np.testing.assert_array_equal(a, b)  # the head adds parameters and changes none
  imgs = jax.random.uniform(jax.random.key(1), (4, 4, 28, 28, 1), minval=-1.0, maxval=1.0)
  real, sets, labels = imgs[:, 0], imgs[:, 1:], jnp.array([0, 3, 1, 4])
  np.testing.assert_array_equal(
    model.discriminate(p_head.d, real, sets), plain.discriminate(p_plain.d, real, sets)
  )
  logits = model.classify(p_head.d, real)
  assert logits.shape == (4, 5)
  base = gan.GanTrainConfig(model, loss="ns", d_steps=1, ema=0.0)
  cfg = dataclasses.replace(base, class_weight=0.5)
  state = gan.init(jax.random.key(0), base)
  key = jax.random.key(2)
  _, m0 = jax.jit(functools.partial(gan.train_step, config=base))(state, real, key, support=sets)
  new, m1 = jax.jit(functools.partial(gan.train_step, config=cfg))(
    state, real, key, support=sets, labels=labels
  )
  xent = lambda lg: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lg, labels))
  np.testing.assert_allclose(m1["d_loss"] - m0["d_loss"], 0.5 * xent(logits), rtol=1e-5)
  z = model.sample_z(jax.random.split(key, 3)[-1], 4)  # G's latents: the step's last key
  fake = model.generate(state.params.g, z, sets)
  d1 = new.params.d  # G's loss is under the updated D
  want = base.loss.g_objective(model.discriminate(d1, fake, sets)) + 0.5 * xent(
    model.classify(d1, fake)
  )
  np.testing.assert_allclose(m1["g_loss"], want, rtol=1e-5)
  assert float(jnp.abs(new.params.d["cls"]["kernel"] - state.params.d["cls"]["kernel"]).max()) > 0


def test_class_head_errors_name_the_fix():
  with pytest.raises(ValueError, match="num_classes=-1"):
    mg.models.cfsgan28(num_classes=-1)
  plain = _tiny_cfsgan28()
  with pytest.raises(ValueError, match="has no class head"):
    plain.classify(plain.init(jax.random.key(0)).d, jnp.zeros((2, 28, 28, 1)))
  with pytest.raises(ValueError, match=r"class_weight=1.0 needs a discriminator with a class"):
    gan.GanTrainConfig(plain, class_weight=1.0)
  cfg = gan.GanTrainConfig(_tiny_cfsgan28(num_classes=3), class_weight=1.0)
  state = gan.init(jax.random.key(0), cfg)
  x = jnp.zeros((2, 28, 28, 1))
  with pytest.raises(ValueError, match=r"needs labels=int\[2\]"):
    gan.train_step(state, x, jax.random.key(1), cfg, support=jnp.zeros((2, 3, 28, 28, 1)))


def test_pretraining_run_labels_each_task_with_its_class_for_the_class_head():
  """train_lib.Run: with pretrain.class_weight, each batch carries the class of each task
  (its images are that class's), the model's head must cover the split's classes, and a
  step trains on it."""
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  from experiments.configs import cond_pilot as cfg  # pylint: disable=g-import-not-at-top

  c = cfg.get_config()
  c.model_kw.update(g_width=16, d_width=8, w_dim=16, code_dim=8, num_classes=7)
  c.pretrain.update(batch=4, class_weight=1.0)
  split = train_lib.load_split(c, "train", verbose=False)
  with pytest.raises(ValueError, match=f"model_kw.num_classes={len(split.images)}"):
    train_lib.Run(c, "pretrain", 0, split)
  c.model_kw.num_classes = len(split.images)
  run = train_lib.Run(c, "pretrain", 0, split)
  batch = run.batch(3)
  assert isinstance(batch, train_lib.LabelledTasks) and batch.labels.shape == (4,)
  for t, label in enumerate(batch.labels.tolist()):
    own = np.asarray(split.images[label])
    for img in np.asarray(batch.tasks.support[t]):  # target and set: images of that class
      assert np.min(np.abs(own - img).reshape(len(own), -1).max(axis=1)) == 0.0
  state, metrics = run.step_fn(run.state0, batch, run.key(3))
  assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["g_loss"]))
