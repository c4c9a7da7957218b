"""The learned-optimiser experiment end to end on a tiny config."""

import json
import os

import jax
import ml_collections
import numpy as np

import metagan_jax as mg
from experiments import lopt_omniglot
from experiments.configs import lopt_tiny
from tests.helpers import SLOW


@SLOW
def test_tiny_lopt_experiment_tunes_trains_scores_and_reuses(tmp_path):
  """The learned-optimiser experiment end to end (``make test-all``); the learned
  optimiser's mathematics and meta-training are tests/test_lopt.py's, in the default suite."""
  c = lopt_tiny.get_config()
  c.features.cache_dir = str(tmp_path / "cache")
  work = str(tmp_path / "work")
  out = lopt_omniglot.train_and_evaluate(c, work, progress=False)
  best = out["tuning"]["best"]
  assert set(best) == {"sgd|1", "sgd|2", "adam|1", "adam|2"}
  assert all(best[f"sgd|{t}"] in (0.01, 0.1) for t in (1, 2))
  # the chosen rate has the lowest validation KID of its grid
  kid = out["tuning"]["kid"]
  for t in (1, 2):
    scores = {lr: kid[f"sgd|{t}|{lr:g}"] for lr in (0.01, 0.1)}
    assert scores[best[f"sgd|{t}"]] == min(scores.values())
  s = out["summary"]
  for kind in ("sgd", "adam", "lopt"):
    for t in (1, 2):
      v = s["metrics"][f"{kind}|{t}|kid"]
      assert len(v["per_class"]) == 3 and np.isfinite(v["mean"])
  assert [r["step"] for r in out["rows"]] == [1, 2]
  assert "| learned optimiser |" in out["table"] and "| lopt minus Adam |" in out["table"]
  for f in (
    "eval/results.md",
    "eval/results.json",
    "eval/figures/lopt_curve.png",
    "lopt/params.msgpack",
    "tuning.json",
  ):
    assert os.path.exists(os.path.join(work, f)), f
  with open(os.path.join(work, "eval", "results.json")) as f:
    assert json.load(f)["tuning"]["best"] == {k: float(v) for k, v in best.items()}
  # the committed form: the table regenerates from eval/summary.json alone, no per-class rows
  with open(os.path.join(work, "eval", "summary.json")) as f:
    committed = json.load(f)
  assert not any("per_class" in v for v in committed["summary"]["metrics"].values())
  table = lopt_omniglot.markdown_table(
    ml_collections.ConfigDict(committed["config"]),
    committed["summary"],
    committed["tuning"]["best"],
    committed["info"],
  )
  assert table == out["table"]
  # Meta-training moved the optimiser away from its SGD start, and a second call
  # reuses the saved optimiser instead of training again.
  last = out["lopt_params"].d.layers[-1][0]
  assert float(np.abs(np.asarray(last)).max()) > 0
  again, rows = lopt_omniglot.meta_train(c, None, None, os.path.join(work, "lopt"))
  del rows
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(out["lopt_params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The learned optimiser (and the tuned baselines) load in one line and adapt.
  run = mg.load_run(work, method="lopt")
  assert isinstance(run.meta_params, mg.LOptMetaParams) and run.headline == 2
  support = mg.data.load_split("omniglot", "test", verbose=False).images[0][:2]
  assert np.isfinite(run.generate(support, 3, seed=0)).all()
  adam = mg.load_run(work, method="adam")
  assert adam.rule == {"opt": "adam", "lr": best["adam|2"]}
  best_kid = min(("lopt", "sgd", "adam"), key=lambda k: s["metrics"][f"{k}|2|kid"]["mean"])
  assert mg.load_run(work).method == best_kid
