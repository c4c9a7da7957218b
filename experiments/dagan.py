"""The DAGAN augmentation protocol on finished runs (issue 43): one command, one table.

For every run of ``--config.runs`` and every T of ``dagan.sample_steps``, a pool of
generated images per class and K-subset, then the four arms' CNNs (``real`` and
``jitter`` once, shared by all rows) and their t-tests. Writes ``<workdir>/dagan.json``,
``dagan.md`` (the table) and ``<row>_T<t>.png`` (per class: the K images, then pool
samples). See experiments/configs/dagan.py for the commands.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import metagan_jax as mg  # noqa: E402
from experiments import train_lib  # noqa: E402
from experiments.protocol import dagan, report  # noqa: E402


def parse_runs(spec: str) -> list[tuple[str, str, str]]:
  """``"name=path[:method];..."`` -> ``[(name, path, method)]`` (method ``""``: the run's)."""
  rows = []
  for item in filter(None, (s.strip() for s in spec.split(";"))):
    if "=" not in item:
      raise ValueError(f"runs entry {item!r}: write name=path[:method].")
    name, rest = item.split("=", 1)
    path, _, method = rest.partition(":")
    rows.append((name.strip(), path.strip(), method.strip()))
  if not rows:
    raise ValueError("--config.runs is empty: name at least one run, name=path[:method].")
  return rows


def load_row(path: str, method: str, command_config) -> tuple:
  """``(config, meta_params, rule)`` of a finished run, with the command's ``dagan`` fields.

  A ``cond_pilot.py`` folder (``pretrain/`` only) gives its pre-trained GAN (``transfer``)
  and the config's own rule; any other folder goes through :func:`metagan_jax.load_run`.
  """
  pre = os.path.join(path, "pretrain", "config.json")
  if not os.path.exists(os.path.join(path, "config.json")) and os.path.exists(pre):
    if method not in ("", "transfer"):
      raise ValueError(f"{path} holds a pre-trained GAN only: method {method!r} is not in it.")
    with open(pre) as f:
      cfg = ml_collections.ConfigDict(json.load(f)["config"])
    cfg = _with_dagan(cfg, command_config)
    like = mg.gan.init(jax.random.key(0), train_lib.pretrain_config(cfg))
    got = train_lib.restore_checkpoint(
      os.path.join(path, "pretrain", "checkpoints"), cfg.train.keep_checkpoints, like
    )
    if got is None:
      raise FileNotFoundError(f"{path}/pretrain/checkpoints has no checkpoint.")
    return cfg, train_lib.pretrained_params(got[0]), train_lib.default_rule(cfg)
  run = mg.load_run(path, method or None)
  cfg = _with_dagan(ml_collections.ConfigDict(run.config), command_config)
  # load_run has applied Meta-SGD's rate multiplier; the sampler must not apply it again
  rule = {k: v for k, v in run.rule.items() if k != "lr_mult"}
  return cfg, run.meta_params, rule


def _with_dagan(cfg, command_config):
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.dagan = ml_collections.ConfigDict(command_config.dagan.to_dict())
  if command_config.data_dir:
    cfg.data_dir = command_config.data_dir
  return cfg


# dagan fields that change neither the classes nor the real and jitter arms
_ROW_ONLY = ("pool", "psi", "sample_steps", "grid_classes", "max_classes")


def _arms_key(cfg, names) -> dict:
  """What the ``real`` and ``jitter`` arms depend on: the classes and classifier settings."""
  key = {k: v for k, v in cfg.dagan.to_dict().items() if k not in _ROW_ONLY}
  key["classes"] = list(names)
  return key


def _base_arms(cfg, tr, te, names, workdir: str) -> dict:
  """The ``real`` and ``jitter`` arms, or the copy a previous call in ``workdir`` saved for
  the same classes and classifier settings (they do not depend on the rows)."""
  key = _arms_key(cfg, names)
  path = os.path.join(workdir, "base_arms.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved["key"] == key:
      print(f"real and jitter arms from {path}")
      return {a: np.asarray(v) for a, v in saved["acc"].items()}
  acc = dagan.train_arms(cfg, tr, te, None, ("real", "jitter"), int(cfg.dagan.seed))
  with open(path, "w") as f:
    json.dump({"key": key, "acc": {a: v.tolist() for a, v in acc.items()}}, f)
  return acc


def pool_grid(train_CxK, pool_CxP, n: int = 8) -> np.ndarray:
  """Rows of [K images, blank, n pool images] per class."""
  rows = [np.concatenate([s, -np.ones_like(s[:1]), p[:n]]) for s, p in zip(train_CxK, pool_CxP)]
  return train_lib.image_grid(np.concatenate(rows), cols=train_CxK.shape[1] + 1 + n)


def markdown(out: dict) -> str:
  """The table: accuracy per arm (mean +- std over subsets) and the gains with their p."""
  a = out["anchor"]
  lines = [
    f"DAGAN protocol, {out['split']} classes: {out['classes']} classes, K = {out['k']}, "
    f"{out['subsets']} classifiers per arm, {out['steps']} steps each, "
    f"{out['config']['dagan']['pool']} generated images per class and subset. Anchor "
    f"(amurthy1/dagan_torch, K = {a['k']}): {a['real']} -> {a['dagan']} (+{a['gain']}).",
    "",
    "| row | T | real | + generated | + jitter | generated on jitter | gain (p) | "
    "on jitter, gain (p) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  pct = lambda v: f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}"
  pv = lambda p: f"{p:.3f}" if p >= 0.001 else "<0.001"
  psi = lambda r: f" (psi {r['psi']:g})" if r.get("psi", 1.0) != 1.0 else ""
  for r in out["rows"]:
    acc, t = r["acc"], r["tests"]
    lines.append(
      f"| {r['name']} | {r['T']}{psi(r)} | {pct(acc['real'])} | {pct(acc['gen'])} | "
      f"{pct(acc['jitter'])} | {pct(acc['gen_jitter'])} | "
      f"{100 * t['gen-real']['gain']:+.1f} ({pv(t['gen-real']['p'])}) | "
      f"{100 * t['gen_jitter-jitter']['gain']:+.1f} ({pv(t['gen_jitter-jitter']['p'])}) |"
    )
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  """Runs the protocol on every row; writes and returns ``dagan.json``'s content."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  dc = config.dagan
  rows = [(n, p, m, *load_row(p, m, config)) for n, p, m in parse_runs(config.runs)]
  cfg0 = rows[0][3]
  cls = dagan.dagan_classes(cfg0, dc.split)
  tr, te = dagan.subsets(cls["images"], int(dc.k), int(dc.subsets), int(dc.split_seed))
  print(f"{len(cls['names'])} {dc.split} classes, K = {dc.k}, {dc.subsets} subsets")
  base = _base_arms(cfg0, tr, te, cls["names"], workdir)
  print(f"real {100 * base['real'].mean():.1f}  jitter {100 * base['jitter'].mean():.1f}")
  out = {
    "split": dc.split,
    "classes": len(cls["names"]),
    "class_names": cls["names"],
    "k": int(dc.k),
    "subsets": int(dc.subsets),
    "steps": int(dc.steps),
    "config": config.to_dict(),
    "anchor": dagan.ANCHOR,
    "rows": [],
  }
  # rows a previous call in workdir finished (it was killed, or rows were added): kept
  path_json = os.path.join(workdir, "dagan.json")
  done = {}
  if os.path.exists(path_json):
    with open(path_json) as f:
      done = {json.dumps(r["key"], sort_keys=True): r for r in json.load(f)["rows"] if "key" in r}
  arms_key = _arms_key(cfg0, cls["names"])
  for name, path, method, cfg, params, rule in rows:
    model = train_lib.get_model(cfg)
    if float(dc.psi) > 0:
      rule = dict(rule, psi=float(dc.psi))
    for t in train_lib.parse_list(dc.sample_steps, int):
      if t == 0 and not model.conditional:
        continue
      row_key = dict(
        arms_key, name=name, path=path, method=method, T=t, pool=int(dc.pool), rule=rule
      )
      old = done.get(json.dumps(report.jsonable(row_key), sort_keys=True))
      if old is not None:
        print(f"{name} T={t}: from {path_json}")
        out["rows"].append(old)
        continue
      ts = time.time()
      pool = dagan.generated_pools(cfg, params, tr, t, jax.random.key(int(dc.seed) + 7), rule)
      g_s = time.time() - ts
      train_lib.save_png(
        os.path.join(workdir, f"{name}_T{t}.png"),
        pool_grid(tr[0, : int(dc.grid_classes)], pool[0, : int(dc.grid_classes)]),
      )
      acc = dict(base, **dagan.train_arms(cfg, tr, te, pool, ("gen", "gen_jitter"), int(dc.seed)))
      tests = dagan.compare(acc)
      out["rows"].append(
        {
          "name": name,
          "path": path,
          "method": method or "",
          "T": t,
          "acc": {a: v.tolist() for a, v in acc.items()},
          "tests": tests,
          "generate_s": g_s,
          "psi": float(rule.get("psi", 1.0)),
          "key": row_key,
        }
      )
      with open(path_json, "w") as f:  # after every row: a killed call loses one row at most
        json.dump(report.jsonable(out), f, indent=1)
      print(
        f"{name} T={t}: gen {100 * acc['gen'].mean():.1f} "
        f"({100 * tests['gen-real']['gain']:+.1f}, p {tests['gen-real']['p']:.3g}), "
        f"gen on jitter {100 * acc['gen_jitter'].mean():.1f} "
        f"({100 * tests['gen_jitter-jitter']['gain']:+.1f} over jitter, "
        f"p {tests['gen_jitter-jitter']['p']:.3g})"
      )
  out["seconds"] = time.time() - t0
  with open(path_json, "w") as f:
    json.dump(report.jsonable(out), f, indent=1)
  with open(os.path.join(workdir, "dagan.md"), "w") as f:
    f.write(markdown(out))
  print(markdown(out))
  return out


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
  flags.DEFINE_string("workdir", None, "Output folder.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: run(_CONFIG.value, flags.FLAGS.workdir) and None)
