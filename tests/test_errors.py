"""Bad input raises a clear error at construction or trace time, before any compute."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metagan_jax as mg
from tests.conftest import TINY_RUN_GROUP

MODEL = mg.models.mlp(data_dim=2, z_dim=3, hidden=(8,))


def _step(tasks, algorithm="maml"):
  config = mg.MetaConfig(mg.AdaptConfig(MODEL, inner_steps=1), algorithm=algorithm)
  state = mg.init(jax.random.key(0), config)
  return jax.jit(functools.partial(mg.meta_step, config=config))(state, tasks, jax.random.key(1))


def _tasks(support_shape=(2, 4, 2), query_shape=(2, 3, 2), dtype=jnp.float32):
  return mg.Tasks(jnp.zeros(support_shape, dtype), jnp.zeros(query_shape, dtype))


CASES = [
  (
    "inner_steps=-1",
    lambda: mg.AdaptConfig(MODEL, inner_steps=-1),
    ValueError,
    "inner_steps must be an integer >= 0, got -1",
  ),
  ("inner_steps=2.5", lambda: mg.AdaptConfig(MODEL, inner_steps=2.5), ValueError, "inner_steps"),
  ("d_steps=0", lambda: mg.AdaptConfig(MODEL, d_steps=0), ValueError, "d_steps"),
  ("n_fake=0", lambda: mg.AdaptConfig(MODEL, n_fake=0), ValueError, "n_fake"),
  (
    "unknown loss",
    lambda: mg.AdaptConfig(MODEL, loss="lsgan"),
    ValueError,
    "Unknown GAN loss 'lsgan'",
  ),
  ("unknown loss kind", lambda: mg.GanLoss(kind="mse"), ValueError, "Unknown GAN loss kind 'mse'"),
  ("negative penalty", lambda: mg.GanLoss(gp_weight=-1.0), ValueError, "gp_weight=-1.0"),
  (
    "unknown algorithm",
    lambda: mg.MetaConfig(mg.AdaptConfig(MODEL), algorithm="maml2"),
    ValueError,
    "Unknown algorithm 'maml2'",
  ),
  (
    "unknown vectorize",
    lambda: mg.MetaConfig(mg.AdaptConfig(MODEL), vectorize="pmap"),
    ValueError,
    "vectorize",
  ),
  ("model not a GanModel", lambda: mg.AdaptConfig("dcgan28"), TypeError, "GanModel"),
  ("unknown model", lambda: mg.get_model("resnet"), ValueError, "Unknown model 'resnet'"),
  ("unknown norm", lambda: mg.models.dcgan32(norm="batch"), ValueError, "BatchNorm is not offered"),
  (
    "unknown fsgan28 norm",
    lambda: mg.models.fsgan28(g_norm="batch"),
    ValueError,
    "BatchNorm is not offered",
  ),
  (
    "trainable prefix matches nothing",
    lambda: mg.AdaptConfig(mg.models.fsgan28(), g_trainable="maping"),
    ValueError,
    "prefix 'maping' matches no parameter; top-level names are ['mapping', 'synthesis']",
  ),
  (
    "empty trainable spec",
    lambda: mg.AdaptConfig(mg.models.fsgan28(), d_trainable=" , "),
    ValueError,
    "names no parameter",
  ),
  (
    "fsgan28 groups do not divide",
    lambda: mg.models.fsgan28(g_width=20),
    ValueError,
    "multiple of 8",
  ),
  (
    "gan d_steps=0",
    lambda: mg.gan.GanTrainConfig(mg.models.fsgan28(), d_steps=0),
    ValueError,
    "d_steps must be an integer >= 1, got 0",
  ),
  (
    "gan ema=1",
    lambda: mg.gan.GanTrainConfig(mg.models.fsgan28(), ema=1.0),
    ValueError,
    "ema must be in [0, 1)",
  ),
  (
    "blur sigma < 0",
    lambda: mg.data.blur(jnp.zeros((1, 4, 4, 1)), -1.0),
    mg.data.DataError,
    "blur sigma must be >= 0",
  ),
  ("integer data", lambda: _step(_tasks(dtype=jnp.int32)), TypeError, "must be floating point"),
  (
    "support of wrong sample shape",
    lambda: _step(_tasks(support_shape=(2, 4, 3))),
    ValueError,
    "tasks.support[0] has shape (4, 3)",
  ),
  (
    "query of wrong sample shape",
    lambda: _step(_tasks(query_shape=(2, 3, 5))),
    ValueError,
    "tasks.query[0] has shape (3, 5)",
  ),
  (
    "support/query task counts differ",
    lambda: _step(_tasks(query_shape=(3, 3, 2))),
    ValueError,
    "support has 2 tasks but tasks.query has 3",
  ),
  (
    "missing task axis",
    lambda: _step(mg.Tasks(jnp.zeros((2,)), jnp.zeros((2,)))),
    ValueError,
    "must be [T, N, 2]",
  ),
  (
    "tasks not a Tasks",
    lambda: _step((jnp.zeros((2, 4, 2)), jnp.zeros((2, 3, 2)))),
    TypeError,
    "metagan_jax.Tasks",
  ),
  (
    "empty support",
    lambda: mg.adapt(
      MODEL.init(jax.random.key(0)), jnp.zeros((0, 2)), jax.random.key(0), mg.AdaptConfig(MODEL)
    ),
    ValueError,
    "[N >= 1, 2]",
  ),
  (
    "adapt integer support",
    lambda: mg.adapt(
      MODEL.init(jax.random.key(0)),
      jnp.zeros((4, 2), jnp.uint8),
      jax.random.key(0),
      mg.AdaptConfig(MODEL),
    ),
    TypeError,
    "dtype uint8",
  ),
  (
    "meta_step with learned-optimiser params",
    lambda: mg.meta_gradients(
      mg.LOptMetaParams(MODEL.init(jax.random.key(0)), mg.init_lopt_params(jax.random.key(0))),
      mg.Tasks(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4, 2))),
      jax.random.key(0),
      mg.MetaConfig(mg.AdaptConfig(MODEL)),
    ),
    TypeError,
    "use metagan_jax.lopt_train.meta_step",
  ),
  (
    "adapt wrong params",
    lambda: mg.adapt({"g": 1}, jnp.zeros((4, 2)), jax.random.key(0), mg.AdaptConfig(MODEL)),
    TypeError,
    "GanParams, MetaSGDParams or LOptMetaParams, got dict",
  ),
]


@pytest.mark.parametrize("make,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(make, exc, match):
  with pytest.raises(exc) as info:
    make()
  assert match in str(info.value)


def test_errors_come_before_compute(monkeypatch):
  """A shape error must surface while tracing, before XLA compiles anything."""
  calls = []
  monkeypatch.setattr(mg.meta, "adapt_with_aux", lambda *a, **k: calls.append(1))
  with pytest.raises(ValueError):
    _step(_tasks(support_shape=(2, 4, 3)))
  assert not calls


# --- `metagan generate` (python -m metagan_jax generate): bad input, before any compute ---


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_run):
  """The session's tiny run without its evaluation, broken copies of it, and image folders."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top

  from tests.test_cli import _strokes, write_pngs  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("cli")
  shutil.copytree(tiny_run["workdir"], root / "run")  # trained once per session
  shutil.rmtree(root / "run" / "eval")  # a run that was trained but not evaluated
  no_ckpt = root / "no_ckpt"
  shutil.copytree(root / "run", no_ckpt)
  shutil.rmtree(no_ckpt / "train" / "reptile_s0" / "checkpoints")
  other = root / "other_model"
  shutil.copytree(root / "run", other)
  cfg = json.loads((other / "config.json").read_text())
  cfg["model_kw"]["g_width"] = 32
  (other / "config.json").write_text(json.dumps(cfg))
  write_pngs(str(root / "good"), _strokes(0, 3))
  write_pngs(str(root / "one"), _strokes(0, 1))
  write_pngs(str(root / "bad"), _strokes(0, 2))
  (root / "bad" / "broken.png").write_bytes(b"\x89PNG truncated")
  (root / "only_bad").mkdir()
  (root / "only_bad" / "broken.png").write_bytes(b"\x89PNG truncated")
  (root / "empty").mkdir()
  (root / "full_out").mkdir()
  (root / "full_out" / "x.txt").write_text("keep me")
  return root


def _gen(run, images, *extra, out="out"):
  return [
    "generate",
    str(run),
    "--images",
    str(images),
    "--out",
    out,
    "--steps",
    "1",
    "--num",
    "2",
    "--quiet",
    *extra,
  ]


CLI_CASES = [
  (
    "empty image folder",
    lambda r: _gen(r / "run", r / "empty", "--method", "reptile"),
    "no image files",
  ),
  (
    "no readable image",
    lambda r: _gen(r / "run", r / "only_bad", "--method", "reptile", "--skip-bad"),
    "none of its 1 image files is readable",
  ),
  (
    "corrupt file is named",
    lambda r: _gen(r / "run", r / "bad", "--method", "reptile"),
    "broken.png is not a readable image",
  ),
  (
    "one image",
    lambda r: _gen(r / "run", r / "one", "--method", "reptile"),
    "1 usable image; the adaptation needs at least 2",
  ),
  (
    "no checkpoint",
    lambda r: _gen(r / "no_ckpt", r / "good", "--method", "reptile"),
    "no checkpoint in",
  ),
  (
    "checkpoint of another model",
    lambda r: _gen(r / "other_model", r / "good", "--method", "reptile"),
    "holds another model or shape",
  ),
  (
    "unknown method",
    lambda r: _gen(r / "run", r / "good", "--method", "mamll"),
    "unknown method 'mamll'",
  ),
  ("no evaluation to pick the best", lambda r: _gen(r / "run", r / "good"), "has no evaluation"),
  ("not a run folder", lambda r: _gen(r / "good", r / "good"), "has no config.json"),
  (
    "out exists and is not empty",
    lambda r: _gen(r / "run", r / "good", "--method", "reptile", out=str(r / "full_out")),
    "--overwrite",
  ),
]


@TINY_RUN_GROUP
def test_load_run_of_every_kind_of_meta_parameters(trained_run):
  run = mg.load_run(trained_run / "run" / "train" / "metasgd_s0")  # a training folder
  assert run.method == "metasgd" and isinstance(run.meta_params, mg.MetaSGDParams)
  lrs = jax.tree.leaves(run.meta_params.lr)
  # the meta-learned rates (they start at inner_lr = 1e-3 and moved), not the initial ones
  assert any(not np.allclose(np.asarray(x), 1e-3) for x in lrs)
  transfer = mg.load_run(trained_run / "run" / "train" / "pretrain_s0")
  assert transfer.method == "transfer" and isinstance(transfer.meta_params, mg.GanParams)
  reptile = mg.load_run(trained_run / "run", method="reptile", seed=0)
  assert isinstance(reptile.meta_params, mg.GanParams)
  with pytest.raises(mg.RunError, match="seed 3 is not a meta seed"):
    mg.load_run(trained_run / "run", method="reptile", seed=3)


@TINY_RUN_GROUP
@pytest.mark.parametrize("argv,match", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_generate_bad_input_is_a_clear_error(trained_run, argv, match, capsys, monkeypatch):
  from metagan_jax import cli  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(trained_run)
  monkeypatch.setattr(mg.LoadedRun, "generate", lambda *a, **k: pytest.fail("computed"))
  monkeypatch.setattr(mg.LoadedRun, "generate_many", lambda *a, **k: pytest.fail("computed"))
  assert cli.main(argv(trained_run)) == 2
  err = capsys.readouterr().err
  assert match in err, err
  assert not os.path.exists(trained_run / "out")  # nothing half-written
  assert not [f for f in os.listdir(trained_run) if f.startswith(".metagan-")]
  assert (trained_run / "full_out" / "x.txt").read_text() == "keep me"
