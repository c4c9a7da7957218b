"""Training runs: kill/resume equality (real subprocess), corrupted checkpoints, non-finite updates."""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import metagan_jax as mg
from experiments import omniglot, train_lib
from experiments.configs import tiny
from tests.helpers import kill_when_written

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def split():
  return mg.data.load_split("omniglot", "train", verbose=False)


def _config(pretrain=False, **train):
  c = tiny.get_config()
  for k, v in train.items():
    c.train[k] = v
  if pretrain:  # the test trains a pre-training run for train.steps steps
    c.pretrain.steps = c.train.steps
  return c


def _final_params(config, method, run_dir, split):
  like = train_lib.Run(config, method, 0, split).state0
  state, meta, step = train_lib.restore_checkpoint(os.path.join(run_dir, "checkpoints"), 3, like)
  return state.params, step


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, split):
  steps, every = 12, 3
  work = str(tmp_path / "killed")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", "omniglot.py"),
    "--config",
    os.path.join(ROOT, "experiments", "configs", "tiny.py"),
    "--workdir",
    work,
    "--mode",
    "train",
    "--config.methods=reptile",
    f"--config.train.steps={steps}",
    f"--config.train.ckpt_every={every}",
  ]
  env = dict(os.environ, PYTHONPATH=ROOT)
  ckpt = os.path.join(work, "train", "reptile_s0", "checkpoints")
  proc = subprocess.Popen(
    cmd + ["--config.train.step_sleep=0.5"],
    env=env,
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  kill_when_written(proc, os.path.join(ckpt, str(every), "commit_success.txt"))
  assert not os.path.exists(os.path.join(ckpt, str(steps)))  # really killed mid-run

  out = subprocess.run(cmd + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  config = _config(steps=steps, ckpt_every=every)
  config.methods = "reptile"
  resumed, step = _final_params(config, "reptile", os.path.join(work, "train", "reptile_s0"), split)
  assert step == steps
  # The uninterrupted reference: the same pre-training, then the same Reptile run.
  reference = omniglot.train_all(config, str(tmp_path / "ref"), progress=False)[("reptile", 0)]
  _assert_trees_equal(resumed, reference)
  with open(os.path.join(work, "train", "reptile_s0", "metrics.jsonl")) as f:
    logged = [json.loads(l)["step"] for l in f]
  assert logged == list(range(1, steps + 1))  # lines past the checkpoint were dropped


def test_corrupted_latest_checkpoint_falls_back_with_warning(tmp_path, split):
  config = _config(pretrain=True, steps=4, ckpt_every=2)
  run_dir = str(tmp_path / "run")
  final = train_lib.train_run(config, "pretrain", 0, run_dir, split, progress=False)
  with pytest.raises(FileExistsError, match="--resume"):
    train_lib.train_run(config, "pretrain", 0, run_dir, split, progress=False)
  latest = os.path.join(run_dir, "checkpoints", "4", "state")
  for dirpath, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(dirpath, name), "wb") as f:
        f.write(b"garbage")
  like = train_lib.Run(config, "pretrain", 0, split).state0
  with pytest.warns(RuntimeWarning, match="checkpoint step 4 .* unreadable"):
    state, _, step = train_lib.restore_checkpoint(os.path.join(run_dir, "checkpoints"), 3, like)
  assert step == 2
  resumed = train_lib.train_run(config, "pretrain", 0, run_dir, split, resume=True, progress=False)
  _assert_trees_equal(resumed.params, final.params)


def test_run_killed_after_its_first_checkpoint_resumes(tmp_path, split):
  # Killed before any checkpoint past step 0: --resume restores step 0 and must not try
  # to write that checkpoint again (orbax refuses an existing step).
  config = _config(pretrain=True, steps=2, ckpt_every=2)
  run_dir = str(tmp_path / "run")
  final = train_lib.train_run(config, "pretrain", 0, run_dir, split, progress=False)
  shutil.rmtree(os.path.join(run_dir, "checkpoints", "2"))
  resumed = train_lib.train_run(config, "pretrain", 0, run_dir, split, resume=True, progress=False)
  _assert_trees_equal(resumed.params, final.params)
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == [1, 2]


def test_nonfinite_updates_are_skipped_counted_and_stop_the_run(tmp_path, split):
  config = _config(pretrain=True, steps=3, inject_nan_steps="1")
  with pytest.warns(RuntimeWarning, match="non-finite .* step 2; update skipped"):
    state = train_lib.train_run(config, "pretrain", 0, str(tmp_path / "a"), split, progress=False)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  with open(tmp_path / "a" / "metrics.jsonl") as f:
    skipped = [json.loads(l)["nonfinite_skipped"] for l in f]
  assert skipped == [0, 1, 1]
  assert int(state.step) == 2  # two updates applied, one skipped

  config = _config(pretrain=True, steps=5, inject_nan_steps="1,2,3", max_nonfinite=2)
  with (
    pytest.warns(RuntimeWarning),
    pytest.raises(train_lib.NonFiniteError, match="2 non-finite updates in a row at step 3"),
  ):
    train_lib.train_run(config, "pretrain", 0, str(tmp_path / "b"), split, progress=False)


@pytest.mark.parametrize("method", ["reptile", "maml"])
def test_training_step_is_built_from_every_rule_field_of_the_config(method):
  """The step a run trains with sees n_fake, second_order_steps, ... as set in the config."""
  config = tiny.get_config()
  config.inner_steps = 3
  config.n_fake = 2 * config.train.k
  config.second_order_steps = "1"
  config.d_trainable = "conv3,fc"
  config.augment = "translation"
  built = train_lib.meta_config(
    ml_collections.ConfigDict(json.loads(train_lib._step_key(config))), method
  ).adapt  # pylint: disable=protected-access
  direct = train_lib.meta_config(config, method).adapt
  for field in (
    "n_fake",
    "second_order_steps",
    "inner_steps",
    "d_steps",
    "g_steps",
    "d_trainable",
    "g_trainable",
    "augment",
    "inner_lr",
  ):
    assert getattr(built, field) == getattr(direct, field), field
  assert built.n_fake == 2 * config.train.k and built.d_trainable == "conv3,fc"
  assert built.second_order_steps == (1 if method == "maml" else None)
  # bookkeeping fields do not split the compilation cache
  other = tiny.get_config()
  other.inner_steps, other.n_fake, other.second_order_steps = 3, 2 * other.train.k, "1"
  other.d_trainable, other.augment = "conv3,fc", "translation"
  other.meta_seeds, other.train.steps, other.eval.n_gen = "5,6", 7, 3
  other.pretrain.steps = 9  # a long pre-training and its stages share one step
  assert train_lib._step_key(other) == train_lib._step_key(config)  # pylint: disable=protected-access


def test_unknown_method_is_named():
  with pytest.raises(ValueError, match="'mamll'"):
    train_lib.check_methods(["maml", "mamll"])


@pytest.mark.parametrize("budget_ms, k", [(1e-9, 1), (1e12, 3)])
def test_equal_time_parameters_are_those_of_a_k_step_run(tmp_path, split, budget_ms, k):
  # Reptile's outer optimiser has no schedule: the parameters kept at step k of a
  # 3-step run are exactly a k-step run's, whether k falls before the step that
  # fixes it (held copies) or at the end.
  config = _config(steps=3, ckpt_every=3, sample_every=3)
  run_dir = str(tmp_path / "long")
  state = train_lib.train_run(
    config, "reptile", 0, run_dir, split, progress=False, equal_time_ms=budget_ms
  )
  got, rec = train_lib.equal_time_params(run_dir, mg.parallel.to_host(state.params))
  assert rec["steps"] == k and rec["of_steps"] == 3
  with open(os.path.join(run_dir, "timing.json")) as f:
    timing = json.load(f)
  assert timing["equal_time_steps"] == k and timing["median_step_ms"] > 0
  short = train_lib.train_run(
    _config(steps=k, ckpt_every=3, sample_every=3),
    "reptile",
    0,
    str(tmp_path / "short"),
    split,
    progress=False,
  )
  jax.tree.map(np.testing.assert_array_equal, got, mg.parallel.to_host(short.params))


def test_resuming_with_another_equal_time_budget_is_refused(tmp_path, split):
  run_dir = str(tmp_path / "run")
  train_lib.train_run(
    _config(steps=2, ckpt_every=2, sample_every=2),
    "reptile",
    0,
    run_dir,
    split,
    progress=False,
    equal_time_ms=1e12,
  )
  with pytest.raises(ValueError, match="equal_time_ms=5.0"):  # the reference was retrained
    train_lib.train_run(
      _config(steps=3, ckpt_every=3, sample_every=3),
      "reptile",
      0,
      run_dir,
      split,
      resume=True,
      progress=False,
      equal_time_ms=5.0,
    )
  with pytest.raises(RuntimeError, match="no equal_time.json"):
    train_lib.equal_time_params(str(tmp_path), None)


def test_equal_time_config_names_a_bad_method():
  config = _config()
  config.methods, config.train.equal_time = "reptile,maml,transfer", "maml,transfer"
  with pytest.raises(ValueError, match="'transfer'"):
    train_lib.equal_time_methods(config)
  config.train.equal_time = "maml,metasgd"  # metasgd is not trained: no row, no error
  assert train_lib.equal_time_methods(config) == (["maml"], "reptile")
  config.methods = "maml,transfer"
  with pytest.warns(UserWarning, match="'reptile'"):
    assert train_lib.equal_time_methods(config) == ([], "reptile")
