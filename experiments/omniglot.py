r"""Meta-train GANs on Omniglot, adapt to unseen alphabets, score against baselines.

Run (the short version, ~15 min on 2 CPU cores; prints the results table):
  python experiments/omniglot.py --config experiments/configs/omniglot_short.py \
      --workdir runs/omniglot_short
The full protocol (3 meta seeds x 2 adaptation seeds):
  python experiments/omniglot.py --config experiments/configs/omniglot_full.py \
      --workdir runs/omniglot_full
Options: --resume (continue a killed run), --mode=train|all, any config field as
--config.train.steps=100, --config.methods=maml,transfer.

Several processes (hosts, or processes on one machine), each started with
the same command plus its id (or the environment variables METAGAN_COORDINATOR,
METAGAN_NUM_PROCESSES, METAGAN_PROCESS_ID; see metagan_jax/parallel.py):
  python experiments/omniglot.py --config ... --workdir <shared folder> \
      --coordinator host0:12345 --num_processes 2 --process_id 0   # and 1 on the other
Every meta-step spreads its T tasks over all devices of all processes, each
process drawing its own tasks (distinct sampling streams); checkpoints are
saved by all processes through orbax; logs, images, and results are written
by process 0; every process evaluates (the same numbers). All processes wait
for each other at one last barrier (``mg.parallel.distributed``; deadline
$METAGAN_BARRIER_TIMEOUT_S, default one hour) and shut down together.

The workdir gets one folder per training run (train/<method>_s<seed>/, see
experiments/train_lib.py), eval/ (results.json, summary.json, results.md, figures/), and
test_classes.json (the test classes and their support / held-out indices).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import metagan_jax as mg  # pylint: disable=g-import-not-at-top
from experiments import protocol, train_lib  # pylint: disable=g-import-not-at-top


def train_all(config, workdir: str, resume: bool = False, progress: bool = True) -> dict:
  """Trains every (method, meta seed) run; returns ``{(method, seed): meta-parameters}``.

  Pre-training runs first (``train/pretrain_s<seed>``) when ``transfer`` is a
  method or the meta methods start from it (``config.init = "pretrained"``):
  ``transfer`` of a seed is its pre-trained GAN, unchanged.
  """
  methods = train_lib.parse_list(config.methods)
  train_lib.check_methods(methods)
  seeds = train_lib.parse_list(config.meta_seeds, int)
  if config.init not in ("random", "pretrained"):
    raise ValueError(f"config.init must be 'random' or 'pretrained', got {config.init!r}.")
  main = train_lib.is_main_process()
  split = train_lib.load_split(config, "train", run_dir=workdir if main else None, verbose=main)
  params, timing, pretrained = {}, {}, {}
  meta = [m for m in methods if m in train_lib.META_METHODS]
  equal_time, ref = train_lib.equal_time_methods(config)
  if equal_time:  # the reference trains first: its time per step sets the others' budget
    methods = [ref] + [m for m in methods if m != ref]
  if "transfer" in methods or (meta and config.init == "pretrained"):
    for ps in sorted({train_lib.pretrain_seed(config, s) for s in seeds}):
      t0 = time.perf_counter()
      state = train_lib.train_run(
        config,
        "pretrain",
        ps,
        os.path.join(workdir, "train", f"pretrain_s{ps}"),
        split,
        resume=resume,
        progress=progress,
      )
      pretrained[ps] = mg.parallel.to_host(train_lib.pretrained_params(state))
      timing[f"pretrain_s{ps}"] = round(time.perf_counter() - t0, 1)
  for method in methods:
    for seed in seeds:
      if method == "transfer":
        params[(method, seed)] = pretrained[train_lib.pretrain_seed(config, seed)]
        continue
      t0 = time.perf_counter()
      init = (
        pretrained[train_lib.pretrain_seed(config, seed)]
        if method in meta and config.init == "pretrained"
        else None
      )
      run_dir = os.path.join(workdir, "train", f"{method}_s{seed}")
      budget_ms = None
      if method in equal_time:  # the reference's meta-steps x its median ms (process 0's)
        ref_dir = os.path.join(workdir, "train", f"{ref}_s{seed}")
        ref_ms = train_lib.median_step_ms(ref_dir)
        if ref_ms is None and main:  # other processes' budgets are replaced by process 0's k
          raise RuntimeError(
            f"{ref_dir}/timing.json is missing, so {method}@time has no "
            f"budget; delete {ref_dir} and run again to time it."
          )
        budget_ms = (ref_ms or 1.0) * int(config.train.steps)
      state = train_lib.train_run(
        config,
        method,
        seed,
        run_dir,
        split,
        resume=resume,
        progress=progress,
        init_params=init,
        equal_time_ms=budget_ms,
      )
      # evaluated per process, from host copies
      params[(method, seed)] = mg.parallel.to_host(
        state.params if method in meta else train_lib.Run.init_params(state)
      )
      timing[f"{method}_s{seed}"] = round(time.perf_counter() - t0, 1)
      if method in equal_time:
        p_eq, rec = train_lib.equal_time_params(run_dir, params[(method, seed)])
        params[(train_lib.equal_time_name(method), seed)] = p_eq
        timing[f"{train_lib.equal_time_name(method)}_s{seed}_steps"] = rec["steps"]
  if main:
    with open(os.path.join(workdir, "train_timing.json"), "w") as f:
      json.dump(timing, f, indent=1)
  return params


def write_summary(eval_dir: str, summary: dict, info: dict, config: dict) -> str:
  """``eval/summary.json``: the run's ``summary`` and ``info`` (no per-class rows) and config.

  This is the file committed as ``experiments/results/<run name>.json`` for every run a
  README quotes, so that each of its tables can be regenerated from it
  (``protocol.markdown_table``).
  """
  path = os.path.join(eval_dir, "summary.json")
  with open(path, "w") as f:
    json.dump(protocol.jsonable({"summary": summary, "info": info, "config": config}), f, indent=1)
  return path


def train_seconds(config, workdir: str) -> dict:
  """``{"<method>_s<seed>": timing.json}`` of every meta-training run, in config order."""
  out = {}
  _, ref = train_lib.equal_time_methods(config)
  for m in train_lib.parse_list(config.methods):
    for x in train_lib.parse_list(config.meta_seeds, int):
      path = os.path.join(workdir, "train", f"{m}_s{x}", "timing.json")
      if m in train_lib.META_METHODS and os.path.exists(path):
        with open(path) as f:
          out[f"{m}_s{x}"] = dict(json.load(f), of=ref)
        eq_path = os.path.join(os.path.dirname(path), "equal_time.json")
        if out[f"{m}_s{x}"].get("equal_time_steps") and os.path.exists(eq_path):
          with open(eq_path) as f:  # the median ms the equal-time step was fixed from
            out[f"{m}_s{x}"]["equal_time_probe_ms"] = json.load(f)["probe_median_ms"]
  return out


def train_and_evaluate(
  config, workdir: str, resume: bool = False, mode: str = "all", progress: bool = True
) -> dict:
  """The whole experiment: feature net, training runs, protocol, table, figures.

  Args:
    config: an ``ml_collections.ConfigDict`` from ``experiments/configs``.
    workdir: output folder.
    resume: continue runs from their newest readable checkpoints.
    mode: ``"all"`` or ``"train"`` (training runs only).
    progress: show tqdm bars.

  Returns:
    ``{"table": markdown, "summary": ..., "workdir": ...}`` (``mode="all"``) or
    ``{"params": {(method, seed): params}}`` (``mode="train"``).
  """
  if mode not in ("all", "train"):
    raise ValueError(f"mode must be 'all' or 'train', got {mode!r}.")
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  main = train_lib.is_main_process()
  if main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=1)
  if mode == "all":  # the feature net first: it is cached and reused by every run
    features_fn, feat_info = protocol.feature_net(config, verbose=main)
    if main:
      print(
        f"[featnet] {feat_info['num_classes']}-way, held-out accuracy "
        f"{feat_info['heldout_acc']:.3f} ({feat_info['cache']})",
        flush=True,
      )
  params = train_all(config, workdir, resume=resume, progress=progress)
  if mode == "train":
    return {"params": params}
  t_train = time.perf_counter() - t_start
  tuning = protocol.tune_rules(config, params, features_fn, verbose=main)
  res = protocol.evaluate(config, params, features_fn, verbose=main, rules=tuning["rules"])
  summary = protocol.summarise(config, res)
  eval_dir = os.path.join(workdir, "eval")
  if not main:
    return {
      "table": None,
      "summary": summary,
      "workdir": workdir,
      "wall_s": time.perf_counter() - t_start,
    }
  fig_dir = os.path.join(eval_dir, "figures")
  protocol.plot_curves(summary, os.path.join(fig_dir, "adaptation_curve.png"))
  protocol.save_grids(config, res, fig_dir)
  protocol.headline_picture(config, res, summary, os.path.join(fig_dir, "headline.png"))
  tc, pc = config.train, config.pretrain
  seeds = train_lib.parse_list(config.meta_seeds, int)
  aseeds = train_lib.parse_list(config.eval.adapt_seeds, int)
  n_pre = len({train_lib.pretrain_seed(config, x) for x in seeds})
  info = {
    "num_test_classes": len(res["classes"]),
    "featnet": feat_info,
    "seeds": f"{len(seeds)} meta-training seed(s) x {len(aseeds)} adaptation seed(s); "
    f"mean [95% bootstrap CI over seeds and classes]",
    "training": (
      f"Pre-training ({n_pre} GAN(s)): {pc.steps} steps of batch {pc.batch} on all "
      f"meta-training classes; `transfer` is that GAN adapted by the same rule. "
      f"Meta-training from the {config.init} initialisation: {tc.steps} meta-steps "
      f"x {tc.tasks} tasks x {config.inner_steps} inner steps (K={tc.k}, Q={tc.q}); "
      f"config {config.name}."
    ),
    "rules": {f"{m}_s{x}": protocol.rule_name(r) for (m, x), r in tuning["rules"].items()}
    if tuning["scores"]
    else {},
    "tuning": tuning["scores"],
    "tuning_by_method": tuning["method_scores"],  # mean over seeds: what chose each rule
    # the test-time rule of every run, as metagan_jax.recipes.adapt_config takes it
    "rule_dicts": {f"{m}_s{x}": r for (m, x), r in tuning["rules"].items()},
    "health": train_lib.run_health(sorted(glob.glob(os.path.join(workdir, "train", "*")))),
    "train_seconds": train_seconds(config, workdir),
  }
  table = protocol.markdown_table(config, summary, info)
  with open(os.path.join(workdir, "test_classes.json"), "w") as f:
    json.dump(
      {"classes": res["classes"], "indices": res["indices"], "k": config.eval.k}, f, indent=1
    )
  with open(os.path.join(eval_dir, "results.json"), "w") as f:
    fd = [{k: v for k, v in r.items() if k != "feats"} for r in res["fd"]]
    json.dump(
      protocol.jsonable(
        {"summary": summary, "info": info, "per_class": res["per_class"], "fd": fd}
      ),
      f,
    )
  write_summary(eval_dir, summary, info, config.to_dict())
  total = time.perf_counter() - t_start
  with open(os.path.join(eval_dir, "results.md"), "w") as f:
    f.write(table + f"\n\nWall time: {total:.0f} s (training {t_train:.0f} s).\n")
  return {"table": table, "summary": summary, "workdir": workdir, "wall_s": total}


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  FLAGS = flags.FLAGS
  # Compiled programs persist between runs (every run of a config compiles the same ones):
  # $JAX_COMPILATION_CACHE_DIR, else ~/.cache/metagan_jax/xla; METAGAN_COMPILATION_CACHE=0: off.
  mg.compile_cache.enable()
  # Every process waits at a final barrier before the shutdown: process 0 alone
  # writes the tables and figures after the others have finished.
  with mg.parallel.distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id):
    with mg.compile_cache.repairing():
      out = train_and_evaluate(
        FLAGS.config,
        FLAGS.workdir,
        resume=FLAGS.resume,
        mode=FLAGS.mode,
        progress=train_lib.is_main_process(),
      )
    if out.get("table"):
      print(out["table"])
      print(f"\nWall time {out['wall_s']:.0f} s; outputs in {out['workdir']}/eval/")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments/configs/omniglot_short.py"), "Experiment config file."
  )
  flags.DEFINE_string("workdir", "runs/omniglot_short", "Output folder.")
  flags.DEFINE_bool("resume", False, "Continue a killed run from its newest checkpoint.")
  flags.DEFINE_enum("mode", "all", ["all", "train"], "Run everything, or training only.")
  train_lib.define_process_flags()
  app.run(main)
