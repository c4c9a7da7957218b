"""Sphinx extension: results tables generated from ``experiments/results/*.json`` at build time.

Usage in a MyST page::

  ```{results-table} omniglot_short_lr8e4_zen4.json
  :show: headline, gain
  ```

The argument is a file of ``experiments/results/`` (or of a folder in it). A main-protocol run (``experiments/omniglot.py``,
keys ``config``, ``summary``, ``info``) is rendered by
``experiments.protocol.report.markdown_table``; a learned-optimiser run
(``experiments/lopt_omniglot.py``, with a ``tuning`` key) by
``experiments.lopt_omniglot.markdown_table``: the same functions that print ``eval/results.md``
at the end of a run, so a page shows exactly what the run printed. A DAGAN-protocol run
(``experiments/dagan.py``, with an ``anchor`` key) is rendered by ``experiments.dagan.markdown``
(one block, ``table``), a voices run (``experiments/voices.py``, ``kind: voices``) by
``experiments.protocol.voices_report.markdown_table`` (one block, ``table``), and a compute curve
(``experiments/compute_curve.py``, ``kind: compute_curve``) by ``experiments.compute_curve.markdown``
(one block, ``table``). The Markdown they return is
parsed as MyST into real table nodes, and the JSON file (and the two modules) are registered as
dependencies of the page, so it is rebuilt when one of them changes.

``:show:`` picks blocks of the printed text, in the order printed (default: every block):

- main protocol: ``headline`` (the table at T = headline, with its caption), ``curve`` (KID
  against T), ``featnet`` (the feature network and training setup), ``gain`` (the "Low-data
  gain" paragraph), ``health`` (non-finite updates), ``timing`` (training seconds per run),
  ``rules`` (the tuned test-time rules);
- learned optimiser: ``kid`` (KID per optimiser and T, with the paired tests against Adam),
  ``fidelity`` (class fidelity), ``info`` (the run's setup).

``:methods:`` (main protocol only) keeps the tables' rows of the methods named (``reptile,
maml, maml@time, transfer``; ``real`` and ``copy`` name the baselines), and the header rows and
the "K real images only" row; the paragraphs are not filtered.

``:optional:`` is for a run not made yet: without the file the directive says so in a paragraph
(never a number) instead of failing the build. ``:figure: NAME`` shows
``experiments/figures/NAME`` after the tables when both it and the results file exist.
"""

from __future__ import annotations

import json
import os
import re
import sys

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "results")
FIGURES = os.path.join(ROOT, "experiments", "figures")

# Block name -> the start of its first line in the printed text.
PROTOCOL_BLOCKS = (
  ("headline", "**Adaptation to "),
  ("curve", "**KID x1e3 against adaptation steps"),
  ("featnet", "Feature network:"),
  ("gain", "Low-data gain"),
  ("health", "Training health:"),
  ("timing", "Training time per run"),
  ("rules", "Test-time rules"),
)
LOPT_BLOCKS = (("fidelity", "Class fidelity"),)  # the first block, "kid", is the KID table


def _is_dagan(res: dict) -> bool:
  """A DAGAN-protocol run (``experiments/dagan.py``) names its anchor."""
  return "anchor" in res and "rows" in res


def _is_lopt(res: dict) -> bool:
  """A learned-optimiser run (``experiments/lopt_omniglot.py``) has its tuning saved beside."""
  return "tuning" in res


def render(name: str) -> tuple[str, bool]:
  """The Markdown a results file's run printed, regenerated; and whether it is a lopt run."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  import ml_collections  # pylint: disable=g-import-not-at-top

  with open(os.path.join(RESULTS, name)) as f:
    res = json.load(f)
  if _is_dagan(res):
    from experiments import dagan  # pylint: disable=g-import-not-at-top

    return dagan.markdown(res), False
  if res.get("kind") == "compute_curve":  # experiments/compute_curve.py: one block, "table"
    from experiments import compute_curve  # pylint: disable=g-import-not-at-top

    return compute_curve.markdown(res), False
  if res.get("kind") == "voices":  # experiments/voices.py: one block, "table"
    from experiments.protocol import voices_report  # pylint: disable=g-import-not-at-top

    config = ml_collections.ConfigDict(res["config"])
    return voices_report.markdown_table(config, res["summary"], res["info"]), False
  config = ml_collections.ConfigDict(res["config"])
  if _is_lopt(res):
    from experiments import lopt_omniglot  # pylint: disable=g-import-not-at-top

    md = lopt_omniglot.markdown_table(config, res["summary"], res["tuning"]["best"], res["info"])
    return md, True
  from experiments.protocol import report  # pylint: disable=g-import-not-at-top

  return report.markdown_table(config, res["summary"], res["info"]), False


def blocks(md: str, lopt: bool) -> list[tuple[str, str]]:
  """Splits the printed text into named blocks (a caption and its table form one block)."""
  if md.startswith(("DAGAN protocol", "**A new voice", "**The compute curve")):
    return [("table", md.strip())]
  starts = LOPT_BLOCKS if lopt else PROTOCOL_BLOCKS
  out: list[tuple[str, list[str]]] = []
  for para in md.split("\n\n"):
    name = next((n for n, s in starts if para.startswith(s)), None)
    if lopt and not out:
      name = "kid"
    if name is not None:
      out.append((name, [para]))
    elif out and (para.startswith("|") or not lopt):
      out[-1][1].append(para)  # a table after its caption, or a paragraph that continues
    else:
      out.append(("info", [para]))  # a lopt run's setup paragraph, after its last table
  return [(n, "\n\n".join(p)) for n, p in out]


def _row_method(line: str) -> str | None:
  """The method a table row is about (``None`` for rows every selection keeps)."""
  cell = line.strip("|").split("|")[0].strip()
  if not cell or set(cell) <= set("-") or cell == "method" or cell.startswith("K real"):
    return None
  m = re.search(r"\((\S+@\S+)\)$", cell)  # "maml at reptile's time (maml@time)"
  return m.group(1) if m else cell.split(" ")[0]


def keep_methods(text: str, methods: list[str]) -> str:
  """Drops the table rows of methods not in ``methods``."""
  return "\n".join(
    line
    for line in text.splitlines()
    if not line.startswith("|") or _row_method(line) in (None, *methods)
  )


def _names(arg: str) -> list[str]:
  return [s.strip() for s in arg.replace(",", " ").split() if s.strip()]


class ResultsTable(SphinxDirective):
  """``{results-table} FILE``: a results file's tables, regenerated at build time."""

  required_arguments = 1
  optional_arguments = 0
  has_content = False
  option_spec = {
    "show": directives.unchanged,
    "methods": directives.unchanged,
    "class": directives.class_option,
    "optional": directives.flag,
    "figure": directives.unchanged,
  }

  def run(self) -> list[nodes.Node]:
    name = self.arguments[0]
    path = os.path.join(RESULTS, name)
    if ".." in name.split("/") or os.path.isabs(name):
      raise self.error(f"results-table: {name!r} is not a file name in {RESULTS}")
    # a dependency even while missing: Sphinx rebuilds the page until the file exists
    self.env.note_dependency(path)
    if not os.path.isfile(path):
      if "optional" not in self.options:
        raise self.error(f"results-table: no file {name!r} in {RESULTS}")
      para = nodes.paragraph()
      para += nodes.strong(text="Not run yet. ")
      para += nodes.Text("The run has not been made: ")
      para += nodes.literal(text=f"experiments/results/{name}")
      para += nodes.Text(" does not exist, so there are no numbers to show here.")
      container = nodes.container(classes=["results-table", "not-run"])
      container += para
      return [container]
    for module in (
      "experiments/protocol/report.py",
      "experiments/lopt_omniglot.py",
      "experiments/dagan.py",
      "experiments/protocol/voices_report.py",
      "experiments/compute_curve.py",
    ):
      self.env.note_dependency(os.path.join(ROOT, module))
    md, lopt = render(name)
    parts = blocks(md, lopt)
    known = [n for n, _ in parts]
    show = _names(self.options.get("show", "")) or known
    unknown = [n for n in show if n not in known]
    if unknown:
      raise self.error(
        f"results-table {name}: unknown block(s) {unknown}; this file has {', '.join(known)}"
      )
    text = "\n\n".join(body for n, body in parts if n in show)
    methods = _names(self.options.get("methods", ""))
    if methods:
      if lopt:
        raise self.error(f"results-table {name}: :methods: is for main-protocol runs")
      found = {_row_method(line) for line in md.splitlines() if line.startswith("|")}
      missing = [m for m in methods if m not in found]
      if missing:
        raise self.error(f"results-table {name}: no rows for {missing}")
      text = keep_methods(text, methods)
    container = nodes.container(classes=["results-table", *self.options.get("class", [])])
    self.set_source_info(container)
    self.state.nested_parse(StringList(text.splitlines(), source=path), 0, container)
    figure = self.options.get("figure", "").strip()
    if figure:
      fig_path = os.path.join(FIGURES, figure)
      if ".." in figure.split("/") or os.path.isabs(figure):
        raise self.error(f"results-table: :figure: {figure!r} is not a file name in {FIGURES}")
      if os.path.isfile(fig_path):  # the image path is relative to the page's folder
        here = os.path.dirname(self.env.doc2path(self.env.docname))
        uri = os.path.relpath(fig_path, here).replace(os.sep, "/")
        container += nodes.image(uri=uri, alt=f"{name}: the figure of its run")
    return [container]


def setup(app):
  """Registers the ``results-table`` directive."""
  app.add_directive("results-table", ResultsTable)
  return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
