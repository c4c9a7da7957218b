"""The Omniglot protocol end to end on the tiny config: table, figures, run folders."""

import dataclasses
import functools
import glob
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import metagan_jax as mg
from experiments import omniglot, protocol
from experiments.configs import tiny
from metagan_jax import cli, runs
from tests.conftest import TINY_RUN_GROUP
from tests.helpers import HANG_TIMEOUT_S
from tests.test_cli import write_pngs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@TINY_RUN_GROUP
def test_protocol_end_to_end_tiny(tmp_path, tiny_run):
  config, work, out = tiny_run["config"], tiny_run["workdir"], tiny_run["out"]
  table = out["table"]
  for row in (
    "| reptile |",
    "| metasgd |",
    "| transfer |",
    "| scratch |",
    "| copy (jittered support) |",
    "| real (held-out images) |",
    "| K real images only |",
    "T=0",
    "T=2",
    "Test-time rules (tuned on validation alphabets)",
  ):
    assert row in table, row
  assert "(reference)" in table and "p=" in table
  for f in (
    "eval/results.json",
    "eval/summary.json",
    "eval/results.md",
    "eval/figures/adaptation_curve.png",
    "eval/figures/samples_reptile.png",
    "eval/figures/samples_all.png",
    "eval/figures/headline.png",
    "test_classes.json",
    "split.json",
    "config.json",
  ):
    assert os.path.exists(os.path.join(work, f)), f
  last = {
    "pretrain_s0": config.pretrain.steps,
    "reptile_s0": config.train.steps,
    "metasgd_s0": config.train.steps,
    "scratch_s0": 0,
  }
  for run in last:
    d = os.path.join(work, "train", run)
    assert os.path.exists(os.path.join(d, "config.json"))
    assert glob.glob(os.path.join(d, "events.out.tfevents.*"))
    assert glob.glob(os.path.join(d, "samples", "*.png"))
    assert os.path.isdir(os.path.join(d, "checkpoints", str(last[run]))), run  # the final step
  with open(os.path.join(work, "eval", "results.json")) as f:
    res = json.load(f)
  with open(os.path.join(work, "eval", "summary.json")) as f:
    committed = json.load(f)
  assert {k: committed[k] for k in ("summary", "info")} == {
    "summary": res["summary"],
    "info": res["info"],
  }
  # the table regenerates from the committed file alone (tests/test_package.py does it for
  # experiments/results/)
  table = protocol.markdown_table(
    ml_collections.ConfigDict(committed["config"]), committed["summary"], committed["info"]
  )
  assert table in open(os.path.join(work, "eval", "results.md")).read()
  rows = res["per_class"]
  assert len(rows) == 7 * 2 * 3  # (4 methods + metasgd@time + copy + real) x 2 steps x 3 classes
  assert all(np.isfinite(r["kid"]) for r in rows)
  s = res["summary"]
  for key in (
    "reptile|2|kid",
    "metasgd|2|kid",
    "metasgd@time|2|kid",
    "transfer|2|fidelity",
    "real|2|kid",
    "copy|0|diversity",
  ):
    assert set(s["metrics"][key]) >= {"mean", "ci", "per_class"}, key
  assert set(s["vs_transfer"]["reptile|2"]) >= {"mean_diff", "p"}
  assert set(s["vs_transfer"]["metasgd|2"]) >= {"mean_diff", "p"}
  assert "mean" in s["lowdata_real"]
  # the anchors' low-data protocol: a CNN from scratch, its K-real baseline with the same fields
  assert set(s["lowdata_cnn_real"]) == set(s["lowdata_real"]) == {"mean", "ci"}
  for m in ("reptile", "transfer", "copy", "real"):
    v = s["metrics"][f"{m}|2|lowdata_cnn_acc"]
    assert set(v) == set(s["metrics"][f"{m}|2|lowdata_acc"]) and 0 <= v["mean"] <= 1, m
  # fitted at the headline T only (the costliest metric), so absent at T = 0 for generated rows
  assert "reptile|0|lowdata_cnn_acc" not in s["metrics"] and "reptile|0|lowdata_acc" in s["metrics"]
  assert "| low-data CNN acc (K real + gen) |" in table
  # what the generated images add: paired with the same classes' K-real-only accuracy
  for name, metric in (("lowdata", "lowdata_acc"), ("lowdata_cnn", "lowdata_cnn_acc")):
    assert set(s[f"{name}_gain"]) == {
      f"{m}|2"
      for m in ("real", "copy", "reptile", "metasgd", "metasgd@time", "transfer", "scratch")
    }, name
    for key, g in s[f"{name}_gain"].items():
      m = key.split("|")[0]
      np.testing.assert_allclose(
        g["mean"],
        s["metrics"][f"{m}|2|{metric}"]["mean"] - s[f"{name}_real"]["mean"],
        atol=1e-12,
        err_msg=f"{name} {m}",
      )
      lo, hi = g["ci"]
      assert lo - 1e-12 <= g["mean"] <= hi + 1e-12 and 0 <= g["p"] <= 1, (name, m)
  assert "Low-data gain at T = 2" in table
  cnn_part = table.split("Low-data gain at T = 2")[1].split("; CNN: ")[1]
  g = s["lowdata_cnn_gain"]["reptile|2"]  # in points, the CI's bounds in order
  assert (
    f"reptile {100 * g['mean']:+.1f} [{100 * g['ci'][0]:+.1f}, {100 * g['ci'][1]:+.1f}], "
    f"p={g['p']:.3f}"
  ) in cnn_part
  # every other meta method against Reptile, paired over the same classes and seeds
  assert set(s["vs_reptile"]) == {f"{m}|{t}" for m in ("metasgd", "metasgd@time") for t in (0, 2)}
  for key, v in s["vs_reptile"].items():
    m, t = key.split("|")
    diff = np.mean(s["metrics"][f"{m}|{t}|kid"]["per_class"]) - np.mean(
      s["metrics"][f"reptile|{t}|kid"]["per_class"]
    )
    np.testing.assert_allclose(v["mean_diff"], diff, rtol=1e-9, atol=1e-15)
    assert 0 < v["p"] <= 1 and "within each seed" in v["paired"]
  assert (
    "| KID vs reptile: diff x1e3, p |" in table
    and "| metasgd at reptile's time (metasgd@time) |" in table
  )
  k = res["info"]["train_seconds"]["metasgd_s0"]["equal_time_steps"]
  assert 1 <= k <= config.train.steps and f"{k} steps at reptile's time" in table
  assert s["best_second_order"] in ("metasgd", "metasgd@time")
  # every run tuned over the same 2 x 2 grid (rates, truncations); each
  # method's rule is the best of its seed-pooled scores, and all its seeds use it
  for run, scores in res["info"]["tuning"].items():
    assert len(scores) == 4, run
    m, seed = run.split("|")
    pooled = res["info"]["tuning_by_method"][m]
    assert pooled == scores  # one seed: the pooled score is the seed's
    chosen = protocol.rule_name(res["info"]["rule_dicts"][f"{m}_s{seed}"])
    assert pooled[chosen] == min(pooled.values()), run
  meta_kid = {m: s["metrics"][f"{m}|2|kid"]["mean"] for m in ("reptile", "metasgd", "metasgd@time")}
  assert s["best_method"] == min(meta_kid, key=meta_kid.get)  # the better meta method
  _load_run_adapts_as_the_evaluation_did(config, work, res)
  with open(os.path.join(work, "test_classes.json")) as f:
    tc = json.load(f)
  for idx in tc["indices"]:  # support and held-out never overlap
    assert not set(idx["support"]) & set(idx["heldout"])
    assert len(idx["support"]) == config.eval.k
  # cached feature net: a second call loads it instead of training
  _, info = protocol.feature_net(config, verbose=False)
  assert os.path.exists(info["cache"] + ".msgpack")
  _generate_from_own_images(tmp_path, work, res)


@functools.partial(jax.jit, static_argnames="config")
def _adapted_g(params, support, key, config):
  """One class's mg.adapt, jitted (op by op, the 12 adaptations below took 16 s)."""
  return mg.adapt(params, support, key, config).g


def _load_run_adapts_as_the_evaluation_did(config, work, res):
  """load_run's params and rule, adapted by hand, equal the protocol's adaptation."""
  params = omniglot.train_all(config, work, resume=True, progress=False)  # loads, no training
  sup = protocol.test_classes(config, verbose=False)["support"]
  key, t = jax.random.key(5), 2
  for method in ("reptile", "transfer"):
    rule = res["info"]["rule_dicts"][f"{method}_s0"]
    run = mg.load_run(work, method=method)
    assert run.psi == rule["psi"]
    z = jax.random.normal(jax.random.fold_in(key, 1_000_000 + t), (len(sup), 4, run.model.z_dim))
    z_avg = jax.random.normal(
      jax.random.fold_in(key, 2_000_000 + t), (protocol.scoring.N_AVG, run.model.z_dim)
    )
    # one class at a time (the protocol batches all classes through mg.adapt_prefix)
    gs = [
      _adapted_g(
        run.meta_params,
        sup[c],
        jax.random.fold_in(jax.random.fold_in(key, c), t),
        config=run.adapt_config_for(t),
      )
      for c in range(len(sup))
    ]
    for psi in (1.0, 0.5):  # plain and truncated sampling, whichever the tuning chose
      ref = protocol.adapt_and_generate(
        config, params[(method, 0)], sup, [t], key, 4, dict(rule, psi=psi)
      )[t]
      for c, g in enumerate(gs):
        x = (
          run.model.generate(g, z[c])
          if psi == 1.0
          else run.model.generate_truncated(g, z[c], psi, z_avg)
        )
        # float32: one class at a time here, all classes batched in the protocol
        np.testing.assert_allclose(x, ref[c], atol=1e-4)


def _generate_from_own_images(tmp_path, work, res):
  """load_run picks the evaluation's best method; the command equals load_run + generate."""
  kid = {
    m: res["summary"]["metrics"][f"{m}|2|kid"]["mean"]
    for m in ("reptile", "metasgd", "transfer", "scratch")
  }
  run = mg.load_run(work)
  assert run.method == min(kid, key=kid.get) and run.headline == 2
  assert run.rule == res["info"]["rule_dicts"][f"{run.method}_s0"]
  # A user's images: an unseen class as raw PNGs (dark strokes on white).
  test = mg.data.load_split("omniglot", "test", verbose=False)
  folder = write_pngs(str(tmp_path / "mine"), 1.0 - (test.images[0][:3, :, :, 0] + 1) / 2)
  out = tmp_path / "out"
  cmd = [
    sys.executable,
    "-m",
    "metagan_jax",
    "generate",
    work,
    "--images",
    folder,
    "--steps",
    "2",
    "--num",
    "5",
    "--out",
    str(out),
    "--seed",
    "7",
    "--quiet",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert str(out) in proc.stdout and "5 samples of" in proc.stdout
  samples = np.load(out / "samples.npz")["samples"]
  assert samples.shape == (5, 28, 28, 1) and samples.dtype == np.float32
  assert len(os.listdir(out / "samples")) == 5 and (out / "grid.png").exists()
  with open(out / "report.json") as f:
    report = json.load(f)
  assert report["method"] == run.method and report["steps"] == 2 and report["images"] == 3
  assert report["inverted"] == [True] * 3  # dark-on-light input, detected
  assert "more than the 2 per class" in report["notes"][0]  # 3 images, trained with K = 2
  support, _ = cli.prepare(cli.read_images(folder)[0], run.preprocessing, "auto")
  np.testing.assert_allclose(samples, run.generate(support, 5, seed=7, steps=2), atol=1e-5)
  # a truncated rule samples as documented: the same latents, centred on N_AVG others
  trunc = dataclasses.replace(run, rule=dict(run.rule, psi=0.3))
  k_adapt, k_z = trunc.keys(7)
  g = _adapted_g(run.meta_params, jnp.asarray(support), k_adapt, config=run.adapt_config_for(2))
  want = run.model.generate_truncated(
    g, run.model.sample_z(k_z, 5), 0.3, run.model.sample_z(jax.random.fold_in(k_z, 1), runs.N_AVG)
  )
  got = trunc.generate(support, 5, seed=7, steps=2)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(got - samples).max() > 1e-3
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
  assert again.returncode == 2 and "--overwrite" in again.stderr  # out exists: refused


@TINY_RUN_GROUP
def test_val_probe_scores_rule_variants_on_validation_classes(tmp_path, tiny_run):
  from experiments import val_probe  # pylint: disable=g-import-not-at-top

  variants = {"base": {}, "freeze_d": {"d_trainable": "fc"}, "aug": {"augment": "translation"}}
  rows = val_probe.probe(
    tiny_run["workdir"],
    ["reptile"],
    variants,
    t=2,
    adapt_seeds=[0],
    n_classes=3,
    out_dir=str(tmp_path),
  )
  assert [r["method"] for r in rows] == ["real", "K real only"] + ["reptile"] * 3
  got = {r["variant"]: r for r in rows[2:]}
  for r in got.values():
    # diversity may be NaN here: the tiny feature net can map all held-out images together
    assert all(np.isfinite(r[m]) for m in val_probe.COLUMNS if m != "diversity"), r
  assert got["base"]["kid"] != got["freeze_d"]["kid"] != got["aug"]["kid"]  # the rules act
  assert len(os.listdir(tmp_path)) == 3  # a sample grid per row


def test_test_classes_are_fixed_and_from_evaluation_alphabets():
  with open(protocol.TEST_CLASSES_FILE) as f:
    names = json.load(f)["classes"]
  assert len(names) == 20 and len(set(names)) == 20
  assert all(n.startswith("images_evaluation/") for n in names)
  assert len({n.split("/")[1] for n in names}) == 20  # one per evaluation alphabet


def test_copy_baseline_is_deterministic_jitter_of_the_support():
  rng = np.random.default_rng(0)
  sup = rng.uniform(-1, 1, (2, 3, 28, 28, 1)).astype(np.float32)
  a, b = protocol.copy_baseline(sup, 5, 0), protocol.copy_baseline(sup, 5, 0)
  assert a.shape == (2, 5, 28, 28, 1)
  np.testing.assert_array_equal(a, b)


def test_real_ceiling_scores_held_out_images_as_samples():
  # Three well-separated classes: the real row must be a perfect ceiling there.
  config = tiny.get_config()
  rng = np.random.default_rng(0)
  centres = 10.0 * np.eye(3, 8)
  f_held = centres[:, None] + rng.normal(size=(3, 16, 8))
  f_sup = centres[:, None] + rng.normal(size=(3, 2, 8))
  per, fd = protocol.real_scores(config, f_sup, f_held)
  np.testing.assert_array_equal(per["fidelity"], 1.0)
  # KID between halves of a class: within noise of 0, far below KID across classes
  across = [mg.metrics.kid(f_held[c, :8], f_held[(c + 1) % 3, 8:]) for c in range(3)]
  assert np.all(np.abs(per["kid"]) < 0.05 * np.min(across)), (per["kid"], across)
  assert np.all(np.abs(per["diversity"] - 1) < 0.2)
  assert np.all(np.abs(per["memorisation"] - 1) < 0.5) and np.isfinite(fd)
  # Leave-one-out: an image whose own class has only it nearby is not its own prototype.
  f_held[0, 0] = centres[1]
  per, _ = protocol.real_scores(config, f_sup, f_held)
  assert per["fidelity"][0] == 15 / 16


def test_lowdata_cnn_learns_from_images_and_is_hurt_by_wrong_ones():
  # Three classes of noisy bars at different places: K = 2 real images with shifts
  # suffice; 16 "generated" images per class drawn from the wrong class mislead it.
  config = tiny.get_config()
  config.eval.cnn_steps = 60
  rng = np.random.default_rng(0)

  def draw(c, n):
    x = -np.ones((n, 28, 28, 1), np.float32)
    x[:, 4 + 8 * c : 8 + 8 * c, 4:24] = 1.0
    return np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1).astype(np.float32)

  sup = np.stack([draw(c, 2) for c in range(3)])
  held = np.stack([draw(c, 10) for c in range(3)])
  acc = protocol.lowdata_cnn_accuracy(config, sup, held, seed=0)
  assert acc.shape == (3,) and acc.min() >= 0.9, acc
  np.testing.assert_array_equal(acc, protocol.lowdata_cnn_accuracy(config, sup, held, seed=0))
  wrong = np.stack([draw((c + 1) % 3, 16) for c in range(3)])
  assert protocol.lowdata_cnn_accuracy(config, sup, held, wrong, seed=0).mean() < 0.5
  # the compiled training loop is the per-step computation, step i keyed by fold_in(key, i)
  from experiments.protocol import scoring  # pylint: disable=g-import-not-at-top

  init, opt_init, train, _, step = scoring._cnn_fns(3, 8, 1e-3, 0.1)  # pylint: disable=protected-access
  x, y = jnp.asarray(sup.reshape(6, 28, 28, 1)), jnp.repeat(jnp.arange(3), 2)
  p = init(jax.random.key(0), x)
  got, _ = train(p, opt_init(p), x, y, 4, jax.random.key(1))
  want, s = p, opt_init(p)
  for i in range(4):
    want, s = jax.jit(step)(want, s, x, y, jax.random.fold_in(jax.random.key(1), i))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert float(jnp.abs(got["Dense_1"]["kernel"] - p["Dense_1"]["kernel"]).max()) > 1e-4


def test_tuning_pools_seeds_so_one_noisy_seed_cannot_flip_a_method(monkeypatch):
  # Validation KID per (params, lr): seed 1 alone prefers lr 0.01 by a hair, the
  # mean over the method's seeds prefers 0.001, and every seed gets that rule.
  config = tiny.get_config()
  config.eval.tune_psi = ""
  rng = np.random.default_rng(0)
  val = {
    "names": ["a", "b"],
    "support": np.zeros((2, 2, 28, 28, 1)),
    "heldout": rng.normal(size=(2, 6, 4)),
  }
  kid = {
    ("p0", 0.001): 1.0,
    ("p0", 0.01): 2.0,
    ("p1", 0.001): 1.1,
    ("p1", 0.01): 1.0,
    ("q", 0.001): 3.0,
    ("q", 0.01): 2.5,
  }
  monkeypatch.setattr(protocol.classes, "val_classes", lambda config: val)
  adaptations = []

  def adapt_and_generate_psis(config, p, sup, steps, key, n, rule, psis):
    adaptations.append(list(psis))
    return {
      steps[0]: {psi: (p, rule["lr"]) if psi == 1.0 else (p, rule["lr"], psi) for psi in psis}
    }

  monkeypatch.setattr(protocol.scoring, "adapt_and_generate_psis", adapt_and_generate_psis)
  monkeypatch.setattr(protocol.tuning.M, "kid", lambda f_gen, f_held: kid[f_gen])
  seen = []

  class Gen:  # stands for the generated images: carries (params, lr) to the KID
    def __init__(self, tag):
      self.tag = tag

    def __len__(self):
      return 2

    def __getitem__(self, c):
      return self.tag

    def __truediv__(self, scale):  # scaled_features divides by one constant
      return self

  def features(x):
    if isinstance(x, tuple):
      seen.append(x)
      return Gen(x)
    return np.asarray(x)

  params = {("reptile", 0): "p0", ("reptile", 1): "p1", ("transfer", 0): "q", ("transfer", 1): "q"}
  out = protocol.tune_rules(config, params, features, verbose=False)
  assert {r["lr"] for run, r in out["rules"].items() if run[0] == "reptile"} == {0.001}
  assert {r["lr"] for run, r in out["rules"].items() if run[0] == "transfer"} == {0.01}
  assert out["scores"]["reptile|1"][protocol.rule_name(out["rules"][("reptile", 1)])] == 1.1
  np.testing.assert_allclose(
    sorted(out["method_scores"]["reptile"].values()), [1.05, 1.05, 1.5, 1.5]
  )
  assert len(seen) == 2 * 3 * 2  # 2 grid g_trainables x (2 reptile + 1 shared transfer) x 2 lrs
  # A truncation grid scores every psi but adapts once per rule without it.
  config.eval.tune_psi = "1,0.5"
  kid.update({(p, lr, 0.5): v - 0.5 if p == "q" else v + 0.1 for (p, lr), v in list(kid.items())})
  seen.clear(), adaptations.clear()
  out = protocol.tune_rules(config, params, features, verbose=False)
  assert len(seen) == 2 * 3 * 2 * 2 and adaptations == [[1.0, 0.5]] * (2 * 3 * 2)
  assert {r["psi"] for run, r in out["rules"].items() if run[0] == "reptile"} == {1.0}
  assert {r["psi"] for run, r in out["rules"].items() if run[0] == "transfer"} == {0.5}
  assert out["scores"]["transfer|0"][protocol.rule_name(out["rules"][("transfer", 0)])] == 2.0
  assert protocol.rule_name(out["rules"][("transfer", 0)]).endswith(", psi 0.5")
  config.eval.tune_psi = "1,1.5"
  with pytest.raises(ValueError, match="tune_psi has 1.5"):
    protocol.rule_grid(config)


def test_lowdata_gain_is_the_paired_difference_over_seeds_and_classes():
  from experiments.protocol import stats  # pylint: disable=g-import-not-at-top

  real_C = np.linspace(0.2, 0.9, 8)
  same = stats.lowdata_gain(np.tile(real_C, (3, 1)), real_C, 500)
  assert same["mean"] == 0 and same["ci"] == (0.0, 0.0) and same["p"] == 1.0
  # +5 points in every cell of seeds 0 and 1, -1 point in seed 2: mean +3, all classes up
  acc_SxC = real_C + np.array([0.05, 0.05, -0.01])[:, None]
  g = stats.lowdata_gain(acc_SxC, real_C, 2000)
  np.testing.assert_allclose(g["mean"], 0.03)
  np.testing.assert_allclose(g["per_class"], np.full(8, 0.03))
  assert -0.01 - 1e-9 <= g["ci"][0] < 0.03 < g["ci"][1] <= 0.05 + 1e-9  # seeds resampled
  assert g["p"] < 0.01  # 8 classes, all of the same sign: exact p = 2 / 2**8


def test_feature_net_keeps_flax_convs_parameters_and_outputs():
  # The feature net's convs are im2col matmuls (its training 1.6x faster on CPU); cached
  # nets trained with nn.Conv must load into it and give the same features.
  class FlaxConvNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
      h = x
      for width in (16, 32, 64):
        h = nn.avg_pool(nn.relu(nn.Conv(width, (3, 3))(h)), (2, 2), (2, 2))
      feats = nn.relu(nn.Dense(64)(h.reshape(h.shape[0], -1)))
      return nn.Dense(self.num_classes)(feats), feats

  x = jax.random.normal(jax.random.key(0), (5, 28, 28, 1))
  ref_p = FlaxConvNet(7).init(jax.random.key(1), x)["params"]
  p = protocol.FeatureNet(7).init(jax.random.key(1), x)["params"]
  assert jax.tree.structure(p) == jax.tree.structure(ref_p)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref_p)):  # same names: same init draws
    np.testing.assert_array_equal(a, b)
  out, ref = (
    protocol.FeatureNet(7).apply({"params": ref_p}, x),
    FlaxConvNet(7).apply({"params": ref_p}, x),
  )
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_protocol_samples_at_psi_1_exactly_as_before_truncation_existed():
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  from experiments.protocol import scoring  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.loss = "ns"  # sampling is what is compared: a loss without WGAN-GP compiles faster
  model = train_lib.get_model(config)
  params = jax.jit(model.init)(jax.random.key(0))
  sup = jax.random.uniform(jax.random.key(1), (2, config.eval.k, *model.data_shape), minval=-1.0)
  key, t = jax.random.key(3), 2
  rule = dict(train_lib.default_rule(config), psi=1.0)
  got = protocol.adapt_and_generate(config, params, np.asarray(sup), [t], key, 4, rule)[t]
  # the pre-truncation computation: adaptation, then model.generate of the same latents
  cj = json.dumps(config.to_dict(), sort_keys=True)
  rj = json.dumps({k: v for k, v in rule.items() if k not in ("lr", "psi")}, sort_keys=True)
  keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), t))(jnp.arange(2))
  # the adaptation as it was: a T-step mg.adapt per class (the protocol now runs the first T
  # steps of one program for every T, mg.adapt_prefix)
  rule_t = dict(json.loads(rj), lr=rule["lr"])
  adapt_t = jax.jit(
    jax.vmap(
      lambda s, k: mg.adapt(
        params, s, k, train_lib.adapt_config(config, inner_steps=t, rule=rule_t)
      )
    )
  )
  g = adapt_t(sup, keys).g
  g_prefix = scoring._adapt_fn(cj, rj, scoring.max_steps(config))(  # pylint: disable=protected-access
    params, jnp.float32(rule["lr"]), sup, keys, jnp.int32(t)
  ).g
  for a, b in zip(jax.tree.leaves(g_prefix), jax.tree.leaves(g)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  g = g_prefix
  z = jax.random.normal(jax.random.fold_in(key, 1_000_000 + t), (2, 4, model.z_dim))
  np.testing.assert_array_equal(got, np.asarray(scoring._generate(cj, True)(g, z)))  # pylint: disable=protected-access
  # one class at a time (lax.map) is each class's own generator on its own latents
  np.testing.assert_allclose(got, jax.jit(jax.vmap(model.generate))(g, z), atol=1e-5)
  shared = scoring._generate(cj, False)(params.g, z)  # pylint: disable=protected-access
  np.testing.assert_allclose(shared[1], jax.jit(model.generate)(params.g, z[1]), atol=1e-5)
  half = protocol.adapt_and_generate(
    config, params, np.asarray(sup), [t], key, 4, dict(rule, psi=0.5)
  )[t]
  assert np.abs(half - got).max() > 1e-3
  # a class at a time (the DAGAN protocol's 100 classes would not fit in memory at once):
  # the same keys and latents, so the same images
  chunked = scoring.adapt_and_generate_psis(
    config, params, np.asarray(sup), [t], key, 4, rule, [1.0, 0.5], max_classes=1
  )[t]
  np.testing.assert_allclose(chunked[1.0], got, atol=1e-5)
  np.testing.assert_allclose(chunked[0.5], half, atol=1e-5)


def test_across_runs_pairs_classes_and_names_a_missing_cell():
  a = {"metrics": {"t|0|kid": {"per_class": [1.0, 2.0, 3.0, 4.0]}}}
  b = {"summary": {"metrics": {"r|10|kid": {"per_class": [2.0, 3.0, 4.0, 5.0]}}}}
  r = protocol.stats.across_runs(a, "t|0|kid", b, "r|10|kid")
  assert r["mean_diff"] == -1.0 and r["n"] == 4
  assert np.isclose(r["p"], 2 / 16, atol=0.01)  # every sign pattern of 4 equal differences
  assert protocol.stats.across_runs(a, "t|0|kid", a, "t|0|kid")["mean_diff"] == 0.0
  with pytest.raises(ValueError, match="cell 'x|0|kid' is not in the summary"):
    protocol.stats.across_runs(a, "x|0|kid", b, "r|10|kid")
