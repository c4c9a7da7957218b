"""The compute curve (experiments/compute_curve.py) on its tiny config: the long pre-training's
checkpoints, kill and resume, where each point starts, and the record it writes."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import metagan_jax as mg
from experiments import compute_curve, train_lib
from experiments.configs import compute_curve as curve_cfg
from tests.helpers import SLOW, kill_when_written, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# one worker trains the module's curve once (`--dist loadgroup`)
pytestmark = pytest.mark.xdist_group("compute_curve")


def _config(cache_dir):
  c = curve_cfg.get_config("tiny")  # P = 2 pre-training steps, M = 2 meta-steps, scales 1, 3
  c.features.cache_dir = str(cache_dir)
  return c


@pytest.fixture(scope="module")
def split():
  return mg.data.load_split("omniglot", "train", verbose=False)


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
  """The tiny curve trained once, uninterrupted (``mode="train"``)."""
  root = tmp_path_factory.mktemp("curve")
  config = _config(root / "cache")
  work = str(root / "work")
  out = compute_curve.train_and_evaluate(config, work, mode="train", progress=False)
  return {"config": config, "workdir": work, "params": out["params"], "root": root}


def _state(config, method, ckpt_dir, split, step=None):
  """``(state, step)`` of a run's checkpoint (its newest, or ``step``)."""
  like = train_lib.Run(config, method, 0, split).state0
  got = train_lib.restore_checkpoint(ckpt_dir, 100, like, step=step)
  assert got is not None, f"no checkpoint {step} in {ckpt_dir}"
  return got[0], got[2]


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _differ(a, b) -> bool:
  return any(
    not np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _point_ckpts(work, k, folder):
  return os.path.join(work, f"x{k}", "train", folder, "checkpoints")


def test_the_long_pretrainings_checkpoint_at_step_s_is_an_s_step_pretraining(curve, split):
  # One run to 3 x P steps; the checkpoints it hands the points (at P and 3 P) must be
  # bitwise those of separate P- and 3P-step runs: no schedule, batches and keys by step.
  config, work = curve["config"], curve["workdir"]
  states = {}
  for k in (1, 3):
    cfg_k = compute_curve.point_config(config, k)
    steps = int(cfg_k.pretrain.steps)
    got, step = _state(cfg_k, "pretrain", _point_ckpts(work, k, "pretrain_s0"), split)
    assert step == steps == 2 * k
    # ... the long run's own checkpoint at that step (it keeps every step here)
    own, _ = _state(
      cfg_k, "pretrain", os.path.join(work, "pretrain_s0", "checkpoints"), split, steps
    )
    _assert_trees_equal(got, own)
    separate = train_lib.train_run(
      cfg_k, "pretrain", 0, str(curve["root"] / f"separate_{k}"), split, progress=False
    )
    _assert_trees_equal(got, separate)  # parameters, EMA generator, optimiser states, step
    assert int(got.step) == steps
    states[k] = got
  assert _differ(states[1].params, states[3].params)  # the comparison can tell steps apart
  with open(os.path.join(work, "pretrain_s0", "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == list(range(1, 7))  # one run, logged once


def test_each_point_meta_trains_from_its_own_pretraining_checkpoint(curve, split):
  config, work = curve["config"], curve["workdir"]
  starts = {}
  for k in (1, 3):
    cfg_k = compute_curve.point_config(config, k)
    pre, step = _state(cfg_k, "pretrain", _point_ckpts(work, k, "pretrain_s0"), split)
    assert step == 2 * k
    # Reptile's state at step 0 is its initialisation: the EMA generator and D of that GAN
    start, _ = _state(cfg_k, "reptile", _point_ckpts(work, k, "reptile_s0"), split, step=0)
    _assert_trees_equal(start.params, train_lib.pretrained_params(pre))
    final, last = _state(cfg_k, "reptile", _point_ckpts(work, k, "reptile_s0"), split)
    assert last == int(cfg_k.train.steps) == 2 * k  # k x the recipe's meta-steps
    _assert_trees_equal(final.params, curve["params"][k][("reptile", 0)])
    with open(os.path.join(work, f"x{k}", "config.json")) as f:
      saved = json.load(f)
    assert (saved["pretrain"]["steps"], saved["train"]["steps"]) == (2 * k, 2 * k)
    starts[k] = start.params
  assert _differ(starts[1], starts[3])  # the points start from different GANs
  with open(os.path.join(work, "stages.json")) as f:
    stages = json.load(f)
  assert [stages[f"meta_x{k}"]["steps"] for k in (1, 3)] == [2, 6]
  assert [stages[f"pretrain_s0_x{k}"]["steps"] for k in (1, 3)] == [2, 6]


@pytest.mark.parametrize(
  "kill_in",
  # a kill in meta-training is omniglot.py's own resume (test_experiments_train); here in the
  # slow suite only, to keep make test's time
  ["pretrain", pytest.param("meta", marks=SLOW)],
)
def test_killed_and_resumed_curve_equals_uninterrupted(tmp_path, curve, split, kill_in):
  # Killed in the long pre-training past the 1x point's checkpoint, or in the 3x point's
  # meta-training; `--resume` must end with the uninterrupted curve's every state.
  work = str(tmp_path / "killed")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", "compute_curve.py"),
    "--config",
    os.path.join(ROOT, "experiments", "configs", "compute_curve.py") + ":tiny",
    "--workdir",
    work,
    "--mode=train",
    f"--config.features.cache_dir={tmp_path / 'cache'}",
  ]
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=xla_flags())
  ckpt, last = {
    "pretrain": (os.path.join(work, "pretrain_s0", "checkpoints"), 6),
    "meta": (_point_ckpts(work, 3, "reptile_s0"), 6),
  }[kill_in]
  proc = subprocess.Popen(
    cmd + ["--config.train.step_sleep=0.5"],
    env=env,
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  kill_when_written(proc, os.path.join(ckpt, "3", "commit_success.txt"))
  assert not os.path.exists(os.path.join(ckpt, str(last)))  # really killed mid-stage

  out = subprocess.run(cmd + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  config = curve["config"]
  for k in (1, 3):
    cfg_k = compute_curve.point_config(config, k)
    for method, folder in (("pretrain", "pretrain_s0"), ("reptile", "reptile_s0")):
      resumed, step = _state(cfg_k, method, _point_ckpts(work, k, folder), split)
      reference, ref_step = _state(cfg_k, method, _point_ckpts(curve["workdir"], k, folder), split)
      assert step == ref_step == 2 * k
      _assert_trees_equal(resumed, reference)
  with open(os.path.join(work, "stages.json")) as f:
    stage = json.load(f)["pretrain_s0_x3" if kill_in == "pretrain" else "meta_x3"]
  # the killed sitting is kept without its seconds; the resumed one finished the stage
  assert [s["seconds"] is None for s in stage["sittings"]] == [True, False] and stage["done"]
  with open(os.path.join(os.path.dirname(ckpt), "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == list(range(1, last + 1))


@pytest.fixture(scope="module")
def scored(curve):
  """Every point of the module's curve tuned and scored on validation classes, once."""
  from experiments import protocol  # pylint: disable=g-import-not-at-top

  config, work = curve["config"], curve["workdir"]
  features_fn, _ = protocol.feature_net(config, verbose=False)
  stages = compute_curve.Stages(work)
  docs = {
    k: compute_curve.score_point(config, work, k, curve["params"][k], features_fn, stages)
    for k in (1, 3)
  }
  return dict(curve, docs=docs, features_fn=features_fn)


def test_each_point_is_scored_on_validation_classes_with_its_tuned_rule(scored, monkeypatch):
  config, work = scored["config"], scored["workdir"]
  grid = ("adam lr 0.001", "adam lr 0.01")  # the tiny curve's tuning grid
  for k, doc in scored["docs"].items():
    val = doc["val"]
    assert len(val["classes"]) == config.eval.tune_classes == 3
    cell = val["methods"]["reptile"]["2"]  # T = curve.val_steps
    for m in ("kid", "fidelity", "diversity", "memorisation", "lowdata_acc"):
      assert len(cell[m]["per_class"]) == 3
      assert cell[m]["mean"] == pytest.approx(np.mean(cell[m]["per_class"]), nan_ok=True)
    assert 0.0 <= cell["fidelity"]["mean"] <= 1.0 and np.isfinite(cell["kid"]["mean"])
    assert val["real"]["fidelity"]["mean"] >= 0.0 and "fd" in val["copy"]
    assert any(val["rules"]["reptile_s0"].startswith(r) for r in grid)
    assert set(doc["info"]["tuning"]["reptile|0"]) == {
      r + ", G: all, D: all" for r in grid
    }  # both rates of the tiny grid were scored
    # the point loads with its tuned rule: what the augmentation protocol samples with
    run = mg.load_run(os.path.join(work, f"x{k}"), method="reptile")
    assert run.rule == doc["info"]["rule_dicts"]["reptile_s0"]
    assert doc["key"]["steps"] == [2 * k, 2 * k]
  # scored again with the same settings: read back, not tuned again
  monkeypatch.setattr(compute_curve.protocol, "tune_rules", None)
  again = compute_curve.score_point(
    config, work, 3, scored["params"][3], scored["features_fn"], compute_curve.Stages(work)
  )
  assert json.dumps(again) == json.dumps(scored["docs"][3])  # NaN-safe


def test_the_curve_writes_its_record_against_steps(scored, monkeypatch):
  from experiments import dagan as dagan_cmd  # pylint: disable=g-import-not-at-top

  config, work = scored["config"], scored["workdir"]
  out = compute_curve.train_and_evaluate(config, work, resume=True, progress=False)
  doc = out["doc"]
  assert doc["kind"] == "compute_curve" and doc["recipe"] == "tiny"
  assert [
    (p["scale"], p["pretrain_steps"], p["meta_steps"], p["steps"]) for p in doc["points"]
  ] == [
    (1, 2, 2, 4),
    (3, 6, 6, 12),
  ]
  for k, p in zip((1, 3), doc["points"]):
    assert json.dumps(p["val"]) == json.dumps(scored["docs"][k]["val"]["methods"])
    arms = p["dagan"]["reptile"]["2"]  # the augmentation protocol's row of this point
    gain = arms["aug_gen_vs_aug"]
    assert gain["gain"] == pytest.approx(arms["aug_gen"] - arms["aug"])
    assert gain["ci95"][0] <= gain["gain"] <= gain["ci95"][1]
    assert 0.0 <= arms["aug"] <= 1.0 and 0.0 <= arms["pool"]["fidelity"] <= 1.0
    assert p["seconds"]["meta"] > 0 and p["seconds"]["pretrain"] > 0
  # pre-training seconds count to each point: the 3x point's include the 1x point's
  assert doc["points"][1]["seconds"]["pretrain"] > doc["points"][0]["seconds"]["pretrain"]
  assert doc["dagan"]["classes"] == config.dagan.num_classes and doc["device"].startswith("cpu")
  assert "unmeasured until a GPU runs it" in out["table"]
  assert [ln.split("|")[1].strip() for ln in out["table"].splitlines() if ln.startswith("| ")][
    1:
  ] == ["1x", "3x"]
  for name in ("compute_curve.json", "compute_curve.md", "compute_curve.png"):
    assert os.path.exists(os.path.join(work, name))
  with open(os.path.join(work, "compute_curve.json")) as f:
    assert compute_curve.markdown(json.load(f)) == out["table"]  # what the results page renders
  # a second call reuses every stage: nothing is trained, tuned or sampled again
  monkeypatch.setattr(compute_curve.protocol, "tune_rules", None)
  monkeypatch.setattr(dagan_cmd.dagan, "train_arms", None)
  monkeypatch.setattr(dagan_cmd.dagan, "generated_pools", None)
  again = compute_curve.train_and_evaluate(config, work, resume=True, progress=False)
  assert json.dumps(again["doc"]["points"]) == json.dumps(doc["points"])  # NaN-safe


def test_bad_recipes_scales_and_resumes_are_named(tmp_path):
  with pytest.raises(ValueError, match="'uncondd'.*uncond"):
    curve_cfg.get_config("uncondd")
  config = curve_cfg.get_config("tiny")
  for bad in ("3,1", "1,1", "0,2", "x"):
    config.curve.scales = bad
    with pytest.raises(ValueError, match="curve.scales"):
      compute_curve.check_config(config)
  config = curve_cfg.get_config("tiny")
  config.methods = "reptile,scratch"
  with pytest.raises(ValueError, match="'scratch'"):
    compute_curve.check_config(config)
  # a started curve: --resume needed, and with it the same training recipe
  config = curve_cfg.get_config("tiny")
  work = str(tmp_path)
  with open(os.path.join(work, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  with open(os.path.join(work, "stages.json"), "w") as f:
    json.dump({}, f)
  with pytest.raises(FileExistsError, match="--resume"):
    compute_curve.train_and_evaluate(config, work)
  config.pretrain.lr = 3e-4
  with pytest.raises(ValueError, match="'pretrain'"):
    compute_curve.train_and_evaluate(config, work, resume=True)
  config = curve_cfg.get_config("tiny")
  config.curve.scales, config.eval.n_gen = "1,3,10", 4  # more points, other scoring: allowed
  compute_curve._check_resumable(config, work, True)  # pylint: disable=protected-access


def test_the_recipes_are_the_committed_ones():
  from experiments.configs import cond_short, omniglot_short  # pylint: disable=g-import-not-at-top

  for recipe, ref in (("uncond", omniglot_short), ("cond", cond_short)):
    c, r = curve_cfg.get_config(recipe), ref.get_config()
    assert compute_curve.scales(c) == [1, 3, 10] and c.meta_seeds == "0"
    for field in ("pretrain", "model", "model_kw", "loss", "inner_steps", "inner_lr"):
      assert c[field] == r[field], field
    for field in ("steps", "tasks", "k", "q", "outer_lr", "outer_b1"):
      assert c.train[field] == r.train[field], field
  assert curve_cfg.get_config("uncond").pretrain.steps == 1000
  assert curve_cfg.get_config("cond").pretrain.steps == 3000
  accel = curve_cfg.get_config("cond_accel")
  assert accel.train.tasks == 16 and accel.pretrain == cond_short.get_config().pretrain
