"""Sphinx extension: HTML5 audio players for a voices results file's clips.

Usage in a MyST page::

  ```{voice-clips} voices_short.json
  ```

The argument is a file of ``experiments/results/`` written by ``experiments/voices.py``. Its
``info.clips`` lists, per shown class, the support recordings (FSDD file names) and the
generated clips of each method (WAV files committed beside the results file). The support
recordings are **not** in the repository: they are copied at build time from the FSDD folder
(``$METAGAN_FSDD_DIR``, else ``../shared/data/fsdd`` beside the repository), under FSDD's
licence (CC BY-SA 4.0, with the attribution the directive prints). The build fails, naming the
folder, when a file is missing. Every clip lands in ``_audio/`` of the HTML output.
"""

from __future__ import annotations

import html
import json
import os
import shutil

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "results")
AUDIO_DIR = "_audio"


def fsdd_dir() -> str | None:
  """The FSDD folder the page is built from, or None."""
  for c in (os.environ.get("METAGAN_FSDD_DIR"), os.path.join(ROOT, "..", "shared", "data", "fsdd")):
    if c and os.path.isdir(os.path.join(c, "recordings")):
      return os.path.abspath(c)
  return None


class VoiceClips(SphinxDirective):
  """``{voice-clips} FILE``: a table of audio players (support, each method's samples)."""

  required_arguments = 1
  has_content = False

  def run(self) -> list[nodes.Node]:
    name = self.arguments[0]
    path = os.path.join(RESULTS, name)
    if ".." in name.split("/") or not os.path.isfile(path):
      raise self.error(f"voice-clips: no file {name!r} in {RESULTS}")
    self.env.note_dependency(path)
    with open(path) as f:
      clips = json.load(f)["info"].get("clips")
    if not clips:
      raise self.error(f"voice-clips: {name} has no info.clips (written by experiments/voices.py)")
    fsdd = fsdd_dir()
    if fsdd is None:
      raise self.error(
        "voice-clips: the FSDD folder is not found; set METAGAN_FSDD_DIR or put it at "
        "../shared/data/fsdd beside the repository (the support clips are copied from there)."
      )
    up = "../" * self.env.docname.count("/")
    copies = self.env.__dict__.setdefault("voice_clip_files", {})
    methods = list(clips[0]["generated"])

    def player(src: str, dest: str) -> str:
      if not os.path.isfile(src):
        raise self.error(f"voice-clips: {src} is missing")
      copies[dest] = src
      return f'<audio controls preload="none" src="{up}{AUDIO_DIR}/{html.escape(dest)}"></audio>'

    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["class", "support (real)", *methods])
    rows = []
    for c in clips:
      cells = [f"<td>{html.escape(c['class'])}</td>"]
      sup = "<br>".join(
        player(os.path.join(fsdd, "recordings", f), f"fsdd/{f}") for f in c["support"]
      )
      cells.append(f"<td>{sup}</td>")
      for m in methods:
        gen = "<br>".join(
          player(os.path.join(os.path.dirname(path), g), f"generated/{g}")
          for g in c["generated"][m]
        )
        cells.append(f"<td>{gen}</td>")
      rows.append("<tr>" + "".join(cells) + "</tr>")
    table = (
      '<table class="voice-clips"><thead><tr>'
      + head
      + "</tr></thead><tbody>"
      + "".join(rows)
      + "</tbody></table>"
      + '<p class="voice-clips-attribution">Support clips: the Free Spoken Digit Dataset '
      "(Jakobovski et al.), CC BY-SA 4.0, copied from its folder when this page was built. "
      "Generated clips: the runs' samples after Griffin-Lim, 8 kHz.</p>"
    )
    return [nodes.raw("", table, format="html")]


def _copy(app, exception):
  if exception is not None or app.builder.format != "html":
    return
  for dest, src in getattr(app.env, "voice_clip_files", {}).items():
    out = os.path.join(app.outdir, AUDIO_DIR, dest)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(src, out)


def _merge(app, env, docnames, other):
  env.__dict__.setdefault("voice_clip_files", {}).update(getattr(other, "voice_clip_files", {}))


def setup(app):
  """Registers the ``voice-clips`` directive and the copy of its clips."""
  app.add_directive("voice-clips", VoiceClips)
  app.connect("build-finished", _copy)
  app.connect("env-merge-info", _merge)
  return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
