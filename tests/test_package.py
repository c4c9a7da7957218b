"""The package imports without TensorFlow, and the README's code blocks run as written."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK_TF = textwrap.dedent("""
    import sys, importlib.abc
    class _NoTF(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
          raise ImportError(f'{name} is blocked in this test')
    sys.meta_path.insert(0, _NoTF())
""")


def _run(code):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
  )


def test_core_imports_and_runs_without_tensorflow():
  code = BLOCK_TF + textwrap.dedent("""
      import functools, jax, metagan_jax as mg
      cfg = mg.MetaConfig(mg.AdaptConfig(mg.models.mlp(hidden=(4,)), inner_steps=1))
      tasks, _ = mg.toy.RingMixtures().sample_tasks(jax.random.key(0), 2, 3, 3)
      state, m = mg.meta_step(mg.init(jax.random.key(0), cfg), tasks, jax.random.key(1), cfg)
      assert not any(k.split('.')[0] in ('tensorflow', 'tensorflow_datasets') for k in sys.modules)
      print('ok', float(m['d_query_loss']))
  """)
  out = _run(code)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("ok")


def _readme_block(marker):
  """The ```python block after ``<!-- marker ... -->`` in README.md."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  return re.search(rf"<!-- {marker}.*?-->\s*```python\n(.*?)```", readme, re.S).group(1)


def test_readme_quickstart_runs_as_written():
  block = _readme_block("quickstart")
  assert len(block.strip().splitlines()) <= 25  # the README's promise: a quickstart of <= 25 lines
  out = _run(
    block
    + "\nimport numpy as np; print(np.asarray(samples).shape, bool(np.isfinite(np.asarray(samples)).all()))"
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  # The block's own line: 100 meta-steps taken, a finite loss.
  loss = re.fullmatch(r"meta-step 100: D query loss (\S+)", lines[-2])
  assert loss and np.isfinite(float(loss.group(1))), lines
  assert lines[-1] == "(256, 2) True"  # the adapted GAN's samples: shape and finite


# --- the README's "Bring your own GAN" block (GanModel.from_nnx) runs too ----------------------


def test_readme_bring_your_own_gan_runs_as_written():
  block = _readme_block("bring-your-own-gan")
  assert len(block.strip().splitlines()) <= 15  # the README's promise: at most 15 lines
  check = textwrap.dedent("""
      import jax, numpy as np
      for algorithm in ("maml", "reptile"):  # second order, and Reptile, through the NNX pair
        cfg = mg.MetaConfig(mg.AdaptConfig(model, inner_steps=2), algorithm=algorithm)
        state = mg.init(jax.random.key(0), cfg)
        tasks, _ = mg.toy.RingMixtures().sample_tasks(jax.random.key(1), 2, 4, 4)
        state, metrics = mg.meta_step(state, tasks, jax.random.key(2), cfg)
        adapted = mg.adapt(state.params, tasks.support[0], jax.random.key(3), cfg.adapt)
        x = model.generate(adapted.g, model.sample_z(jax.random.key(4), 5))
        finite = all(np.isfinite(float(v)) for v in metrics.values()) and np.isfinite(x).all()
        print(algorithm, x.shape, int(state.step), bool(finite))
  """)
  out = _run(block + check)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines()[-2:] == ["maml (5, 2) 1 True", "reptile (5, 2) 1 True"]


def test_readme_tables_are_those_of_the_committed_results():
  # The docs' results pages generate their tables from experiments/results/<run>.json while
  # they build; the README and the research log paste theirs, so every results row they quote
  # must be a row that a committed results file regenerates, and the README must hold at least
  # one results table whole (header, separator and every row of one file's first table).
  import ml_collections  # pylint: disable=g-import-not-at-top

  from experiments.protocol import report  # pylint: disable=g-import-not-at-top

  results = os.path.join(ROOT, "experiments", "results")
  tables = {}  # results file -> the Markdown its run printed, regenerated
  for name in sorted(os.listdir(results)):
    if not name.endswith(".json"):  # folders of other results (cond_pilot/: research log 30)
      continue
    with open(os.path.join(results, name)) as f:
      res = json.load(f)
    config = ml_collections.ConfigDict(res["config"])
    if res.get("kind") == "compute_curve":  # experiments/compute_curve.py
      from experiments import compute_curve  # pylint: disable=g-import-not-at-top

      tables[name] = compute_curve.markdown(res)
    elif res.get("kind") == "voices":  # experiments/voices.py
      from experiments.protocol import voices_report  # pylint: disable=g-import-not-at-top

      tables[name] = voices_report.markdown_table(config, res["summary"], res["info"])
    elif "tuning" in res:  # a learned-optimiser run (experiments/lopt_omniglot.py)
      from experiments import lopt_omniglot  # pylint: disable=g-import-not-at-top

      tables[name] = lopt_omniglot.markdown_table(
        config, res["summary"], res["tuning"]["best"], res["info"]
      )
    else:
      tables[name] = report.markdown_table(config, res["summary"], res["info"])
  assert tables

  def is_row(line):
    return line.startswith("| ") and "---" not in line

  rows = {line for t in tables.values() for line in t.splitlines() if is_row(line)}
  gains = {line for t in tables.values() for line in t.splitlines() if line.startswith("Low-data")}
  # A row "looks like a results row" when its first cell names what a results table's rows name
  # (a method, a baseline, an optimiser); such a row must be one the files regenerate exactly.
  first_cell = lambda line: line.strip().strip("|").split("|")[0].strip()
  names = {first_cell(line) for line in rows} - {"method", "optimiser", "scale"}  # minus headers

  def check(path):
    lines = [line.strip() for line in open(os.path.join(ROOT, path)).read().splitlines()]
    quoted = [line for line in lines if is_row(line) and first_cell(line) in names]
    quoted += [line for line in lines if line.startswith("Low-data gain")]
    bad = [line for line in quoted if line not in rows and line not in gains]
    assert not bad, f"{path}: rows that no committed results file gives: {bad[:2]}"
    return lines, len(quoted)

  readme, quoted = check("README.md")
  assert quoted > 0, "README.md quotes no results row"
  text = "\n".join(readme)
  first_table = lambda t: next(b for b in t.split("\n\n") if b.startswith("| "))
  whole = [name for name, t in tables.items() if first_table(t) in text]
  assert whole, "README.md holds no results table whole (header, separator and all its rows)"
  log = os.path.join("docs", "research_log.md")
  if os.path.exists(os.path.join(ROOT, log)):
    check(log)
