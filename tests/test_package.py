"""The package imports without TensorFlow, and the README quickstart runs as written."""

import json
import os
import re
import subprocess
import sys
import textwrap

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


def test_readme_quickstart_runs_as_written():
  readme = open(os.path.join(ROOT, "README.md")).read()
  block = re.search(r"<!-- quickstart.*?-->\s*```python\n(.*?)```", readme, re.S).group(1)
  assert len(block.strip().splitlines()) <= 14
  out = _run(
    block
    + "\nimport numpy as np; print(np.asarray(samples).shape, bool(np.isfinite(np.asarray(samples)).all()))"
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines()[-1] == "(256, 2) True"


def test_readme_tables_are_those_of_the_committed_results():
  # Every table row a README quotes is regenerated from experiments/results/<run>.json.
  import ml_collections  # pylint: disable=g-import-not-at-top

  from experiments.protocol import report  # pylint: disable=g-import-not-at-top

  results = os.path.join(ROOT, "experiments", "results")
  docs = "".join(open(os.path.join(ROOT, f)).read() for f in ("README.md", "experiments/README.md"))
  checked = 0
  for name in sorted(os.listdir(results)):
    with open(os.path.join(results, name)) as f:
      res = json.load(f)
    config = ml_collections.ConfigDict(res["config"])
    if "tuning" in res:  # a learned-optimiser run (experiments/lopt_omniglot.py)
      from experiments import lopt_omniglot  # pylint: disable=g-import-not-at-top

      table = lopt_omniglot.markdown_table(
        config, res["summary"], res["tuning"]["best"], res["info"]
      )
    else:
      table = report.markdown_table(config, res["summary"], res["info"])
    rows = [
      line
      for line in table.splitlines()
      if (line.startswith("| ") and "---" not in line) or line.startswith("Low-data gain")
    ]
    missing = [r for r in rows if r not in docs]
    assert not missing, f"{name}: README rows differ from the committed results: {missing[:2]}"
    checked += len(rows)
  assert checked > 0
