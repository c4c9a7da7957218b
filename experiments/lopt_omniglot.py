r"""A learned optimiser for adapting a GAN to new Omniglot classes, against tuned SGD and Adam.

Run (~15 min on 2 CPU cores; prints the results table):
  python experiments/lopt_omniglot.py --config experiments/configs/lopt_short.py \
      --workdir runs/lopt_short

Steps, all from one initialisation (a seeded random GAN, or with
--config.lopt.init=pretrained the GAN pre-trained on every meta-training class
as in experiments/omniglot.py):
  1. tune the learning rates of SGD and Adam on the validation alphabets,
     separately for every horizon T (KID in the protocol's feature space);
  2. meta-train the learned optimisers (one for D, one for G) on meta-training
     classes by truncated backprop (or ES / PES) through unrolled inner GAN
     training (metagan_jax.lopt_train), starting from the tuned SGD;
  3. adapt to the protocol's unseen test classes with the learned optimiser,
     tuned SGD and tuned Adam for every T in eval.steps (including horizons
     longer than the training unroll) and score with the experiments protocol.

Outputs in the workdir: tuning.json, lopt/ (metrics.jsonl, params.msgpack),
eval/results.json, eval/results.md, eval/figures/lopt_curve.png, and
eval/summary.json (summary without per-class rows, tuning, info and config: the
file committed as experiments/results/lopt_short.json, from which
``markdown_table`` regenerates the README's table).

Several processes (the same flags and environment variables as
experiments/omniglot.py): every process runs every step (the learned
optimiser's meta-training is not split over hosts) and gets the same numbers;
process 0 alone writes the outputs, and all processes wait for each other at a
last barrier (``mg.parallel.distributed``) before they shut down together.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import flax.serialization  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metagan_jax as mg  # pylint: disable=g-import-not-at-top
from experiments import protocol, train_lib  # pylint: disable=g-import-not-at-top
from metagan_jax import lopt_train as LT  # pylint: disable=g-import-not-at-top
from metagan_jax import metrics as M  # pylint: disable=g-import-not-at-top
from metagan_jax.progress import Progress  # pylint: disable=g-import-not-at-top

OPTIMIZERS = ("sgd", "adam", "lopt")


def lopt_spec(config) -> mg.LOptSpec:
  return mg.LOptSpec(step_mult=config.lopt.step_mult)


def adapt_config(config, inner_steps: int, inner_opt=None) -> mg.AdaptConfig:
  return mg.AdaptConfig(
    train_lib.get_model(config),
    inner_steps=inner_steps,
    d_steps=config.d_steps,
    g_steps=config.g_steps,
    inner_lr=config.inner_lr,
    inner_opt=inner_opt,
    loss=config.loss,
    lopt_spec=lopt_spec(config),
  )


def train_config(config) -> LT.LOptTrainConfig:
  lc = config.lopt
  return LT.LOptTrainConfig(
    adapt_config(config, 1),
    horizon=lc.horizon,
    unroll=lc.unroll,
    estimator=lc.estimator,
    sigma=lc.sigma,
    num_pairs=lc.num_pairs,
    outer_lr=lc.outer_lr,
  )


# --- the initialisation and the learned optimiser (step 2) --------------------------------


def initialisation(config, workdir: str, split, progress: bool) -> mg.GanParams:
  """The GAN every optimiser starts from."""
  if config.lopt.init == "random":
    return train_lib.get_model(config).init(jax.random.key(config.lopt.seed))
  if config.lopt.init != "pretrained":
    raise ValueError(f"lopt.init must be 'pretrained' or 'random', got {config.lopt.init!r}.")
  run_dir = os.path.join(workdir, "train", f"pretrain_s{config.lopt.seed}")
  has_ckpt = os.path.isdir(os.path.join(run_dir, "checkpoints"))
  state = train_lib.train_run(
    config, "pretrain", config.lopt.seed, run_dir, split, resume=has_ckpt, progress=progress
  )
  return mg.parallel.to_host(train_lib.pretrained_params(state))


def meta_train(
  config, init_params, split, out_dir: str, progress: bool = True, start_lr: float | None = None
):
  """Meta-trains the learned optimisers; returns ``(LOptMetaParams, log rows)``.

  Both optimisers start as SGD(``start_lr``, default ``lopt.start_lr``).
  """
  lc = config.lopt
  path = os.path.join(out_dir, "params.msgpack")
  tcfg = train_config(config)
  hidden = tuple(train_lib.parse_list(lc.hidden, int))
  start_lr = start_lr or lc.start_lr or config.inner_lr
  if os.path.exists(path):  # finished before: reuse
    spec, model = lopt_spec(config), train_lib.get_model(config)
    like = mg.LOptMetaParams(
      model.init(jax.random.key(0)),
      *(mg.init_lopt_params(jax.random.key(0), hidden, start_lr, spec) for _ in range(2)),
    )
    with open(path, "rb") as f:
      params = flax.serialization.from_bytes(like, f.read())
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
      return params, [json.loads(l) for l in f]
  sampler = mg.data.TaskSampler(split, lc.tasks, lc.k, lc.q, seed=lc.seed)
  state = LT.init(
    jax.random.key(lc.seed),
    sampler.batch(0),
    tcfg,
    init_params=init_params,
    hidden=hidden,
    lr=start_lr,
  )
  main = train_lib.is_main_process()  # the others compute the same and write nothing
  os.makedirs(out_dir, exist_ok=True)
  step = jax.jit(functools.partial(LT.meta_step, config=tcfg))
  key = jax.random.key(lc.seed + 1)
  rows, t0 = [], time.perf_counter()
  acc = []
  log_path = os.path.join(out_dir, "metrics.jsonl")
  if main:
    open(log_path, "w").close()
  # A tqdm bar on a terminal; in a log file, one plain line every few seconds.
  bar = Progress(
    total=lc.steps,
    desc=f"lopt ({lc.estimator})",
    disable=not progress,
    file=sys.stderr,
    mininterval=1.0,
  )
  with bar:
    for i in range(lc.steps):
      state, metrics = step(state, sampler.batch(i + 1), jax.random.fold_in(key, i))
      acc.append(jax.device_get(metrics))
      if (i + 1) % lc.log_every == 0 or i + 1 == lc.steps:
        row = {
          "step": i + 1,
          **{k: float(np.mean([a[k] for a in acc])) for k in acc[0]},
          "elapsed_s": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        if main:
          with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        acc = []
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if "loss" in k}, refresh=False)
      bar.update(1)
  if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params)):
    raise FloatingPointError(
      "the learned optimiser's parameters became non-finite; lower lopt.outer_lr or lopt.step_mult."
    )
  if main:
    with open(path, "wb") as f:
      f.write(flax.serialization.to_bytes(state.params))
  return state.params, rows


# --- adaptation with each optimiser (steps 1 and 3) -------------------------------------------


@functools.cache
def _adapt_fn(config_json: str, kind: str, steps: int):
  """jit(vmap over classes) of: adapt for ``steps`` with optimiser ``kind``, then generate."""
  config = protocol.scoring._config_from_json(config_json)  # pylint: disable=protected-access
  model = train_lib.get_model(config)
  b1 = config.lopt.adam_b1

  def one(meta, lr, support, key, z):
    # lr is traced, so one compilation serves every rate of a grid; "lopt" ignores it
    # (its optimisers are in meta, an LOptMetaParams).
    opt = {
      "sgd": lambda: optax.sgd(lr),
      "adam": lambda: optax.adam(lr, b1=b1),
      "lopt": lambda: None,
    }[kind]()
    adapted = mg.adapt(meta, support, key, adapt_config(config, steps, opt))
    return model.generate(adapted.g, z)

  return jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0)))


def adapt_generate(
  config, kind: str, meta, lr: float, support_CxK, steps: int, key, n_gen: int
) -> np.ndarray:
  """Images ``[C, n_gen, ...]`` after ``steps`` adaptation steps on each class's support set.

  Class ``c`` uses key ``fold_in(fold_in(key, c), steps)`` for adaptation and
  ``fold_in(key, 1e6 + steps)`` for its samples, as in the Omniglot protocol.
  """
  cj = json.dumps(config.to_dict(), sort_keys=True)
  C = support_CxK.shape[0]
  model = train_lib.get_model(config)
  keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), steps))(jnp.arange(C))
  z = jax.random.normal(jax.random.fold_in(key, 1_000_000 + steps), (C, n_gen, model.z_dim))
  return np.asarray(
    _adapt_fn(cj, kind, steps)(meta, jnp.float32(lr), jnp.asarray(support_CxK), keys, z)
  )


def val_classes(config) -> dict:
  """Support / held-out images of ``lopt.n_val`` classes of the validation alphabets."""
  split = train_lib.load_split(config, "val", verbose=False)
  rng = np.random.default_rng(config.lopt.seed)
  pick = rng.permutation(len(split))[: config.lopt.n_val]
  return protocol.support_heldout(split, pick, config.eval.k, rng)


def tune(config, init_params, features_fn) -> dict:
  """Best SGD and Adam learning rate per T on the validation classes (mean KID)."""
  lc = config.lopt
  vc = val_classes(config)
  f_held = features_fn(vc["heldout"])
  steps = train_lib.parse_list(config.eval.steps, int)
  out = {"classes": vc["names"], "kid": {}, "best": {}}
  for kind, grid in (("sgd", lc.sgd_lrs), ("adam", lc.adam_lrs)):
    for t in steps:
      scores = {}
      for lr in train_lib.parse_list(grid, float):
        gen = adapt_generate(
          config, kind, init_params, lr, vc["support"], t, jax.random.key(20_000), config.eval.n_gen
        )
        f_gen = features_fn(gen)
        kid = float(np.mean([M.kid(f_gen[c], f_held[c]) for c in range(len(f_gen))]))
        scores[lr] = kid if np.isfinite(kid) else float("inf")
        out["kid"][f"{kind}|{t}|{lr:g}"] = kid
      out["best"][f"{kind}|{t}"] = min(scores, key=scores.get)
  return out


def evaluate(config, init_params, lopt_params, best: dict, features_fn) -> dict:
  """Protocol scores of sgd / adam (tuned per T) / lopt on the unseen test classes."""
  ec = config.eval
  steps = train_lib.parse_list(ec.steps, int)
  tc = protocol.test_classes(config, verbose=False)
  feats = protocol.scaled_features(features_fn, tc["heldout"])
  f_sup, f_held = feats(tc["support"]), feats(tc["heldout"])
  per, images = {}, {}
  for kind in OPTIMIZERS:
    for t in steps:
      vals = []
      for a in train_lib.parse_list(ec.adapt_seeds, int):
        meta = init_params if kind != "lopt" else lopt_params
        lr = best.get(f"{kind}|{t}", 0.0)
        gen = adapt_generate(
          config, kind, meta, lr, tc["support"], t, jax.random.key(10_000 + a), ec.n_gen
        )
        scores, _ = protocol.score(config, feats(gen), f_sup, f_held)
        vals.append(scores)
        if a == train_lib.parse_list(ec.adapt_seeds, int)[0]:
          images.setdefault(kind, {})[t] = gen
      for metric in vals[0]:
        per[f"{kind}|{t}|{metric}"] = np.mean([v[metric] for v in vals], axis=0)
  summary = {"steps": steps, "methods": list(OPTIMIZERS), "metrics": {}, "vs_adam": {}}
  for key, v in per.items():
    summary["metrics"][key] = {
      "mean": float(np.mean(v)),
      "ci": M.bootstrap_ci(v, ec.n_boot),
      "per_class": np.asarray(v).tolist(),
    }
  for t in steps:
    for kind in ("lopt", "sgd"):
      summary["vs_adam"][f"{kind}|{t}"] = M.paired_test(
        per[f"{kind}|{t}|kid"], per[f"adam|{t}|kid"]
      )
  return {"summary": summary, "classes": tc["names"], "support": tc["support"], "images": images}


def markdown_table(config, summary: dict, best: dict, info: str) -> str:
  """KID x1e3 per optimiser and T, with the tuned learning rates and paired tests vs Adam."""
  steps = summary["steps"]
  f = lambda d: f"{d['mean'] * 1e3:.3g} [{d['ci'][0] * 1e3:.3g}, {d['ci'][1] * 1e3:.3g}]"
  lines = [
    "| optimiser | " + " | ".join(f"T={t}" for t in steps) + " |",
    "|---|" + "---|" * len(steps),
  ]
  for kind in OPTIMIZERS:
    cells = []
    for t in steps:
      c = f(summary["metrics"][f"{kind}|{t}|kid"])
      if kind != "lopt":
        c += f" (lr {best[f'{kind}|{t}']:g})"
      cells.append(c)
    name = {
      "sgd": "SGD, lr tuned per T",
      "adam": f"Adam(b1={config.lopt.adam_b1}), lr tuned per T",
      "lopt": "learned optimiser",
    }[kind]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for kind in ("lopt", "sgd"):
    cells = []
    for t in steps:
      p = summary["vs_adam"][f"{kind}|{t}"]
      cells.append(f"{p['mean_diff'] * 1e3:+.3g} (p={p['p']:.3f})")
    lines.append(f"| {kind} minus Adam | " + " | ".join(cells) + " |")
  lines += [
    "",
    "Class fidelity (nearest-prototype accuracy of the samples, higher is better):",
    "",
    "| optimiser | " + " | ".join(f"T={t}" for t in steps) + " |",
    "|---|" + "---|" * len(steps),
  ]
  for kind in OPTIMIZERS:
    lines.append(
      f"| {kind} | "
      + " | ".join(f"{summary['metrics'][f'{kind}|{t}|fidelity']['mean']:.2f}" for t in steps)
      + " |"
    )
  return "\n".join(lines + ["", info])


def write_summary(
  eval_dir: str, summary: dict, tuning: dict, info: str, config: dict, wall_s: float
) -> str:
  """``eval/summary.json``: what ``markdown_table`` needs, without the per-class rows.

  Committed as ``experiments/results/lopt_<run name>.json`` for a run a README quotes;
  ``markdown_table(ConfigDict(s["config"]), s["summary"], s["tuning"]["best"], s["info"])``
  gives its table again.
  """
  metrics = {
    k: {f: v for f, v in d.items() if f != "per_class"} for k, d in summary["metrics"].items()
  }
  path = os.path.join(eval_dir, "summary.json")
  with open(path, "w") as f:
    json.dump(
      protocol.jsonable(
        {
          "summary": {**summary, "metrics": metrics},
          "tuning": tuning,
          "info": info,
          "config": config,
          "wall_s": wall_s,
        }
      ),
      f,
      indent=1,
    )
  return path


def plot(summary: dict, rows: list, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  steps = summary["steps"]
  for kind in OPTIMIZERS:
    d = [summary["metrics"][f"{kind}|{t}|kid"] for t in steps]
    mean = np.array([x["mean"] for x in d]) * 1e3
    axes[0].plot(steps, mean, marker="o", ms=3, label=kind)
    axes[0].fill_between(
      steps, [x["ci"][0] * 1e3 for x in d], [x["ci"][1] * 1e3 for x in d], alpha=0.15
    )
  axes[0].set_xlabel("adaptation steps T")
  axes[0].set_ylabel("KID x1e3 (lower is better)")
  axes[0].set_yscale("symlog", linthresh=1.0)
  axes[0].legend()
  axes[0].grid(alpha=0.3)
  axes[1].plot([r["step"] for r in rows], [r["meta_loss"] for r in rows])
  axes[1].set_xlabel("meta-training step")
  axes[1].set_ylabel("meta-loss (pixel MMD², train tasks)")
  axes[1].grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
  """The whole learned-optimiser experiment; returns ``{"table", "summary", "tuning", ...}``."""
  t_start = time.perf_counter()
  main = train_lib.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  if main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=1)
  features_fn, feat_info = protocol.feature_net(config, verbose=False)
  split = train_lib.load_split(config, "train", verbose=False)
  init_params = initialisation(config, workdir, split, progress)
  tuning = tune(config, init_params, features_fn)
  if main:
    with open(os.path.join(workdir, "tuning.json"), "w") as f:
      json.dump(tuning, f, indent=1)
  # The learned optimiser starts as the tuned SGD (at the longest T within its horizon).
  steps = train_lib.parse_list(config.eval.steps, int)
  t_start_lr = max([t for t in steps if t <= config.lopt.horizon] or steps[:1])
  start_lr = config.lopt.start_lr or tuning["best"][f"sgd|{t_start_lr}"]
  t0 = time.perf_counter()
  lopt_params, rows = meta_train(
    config, init_params, split, os.path.join(workdir, "lopt"), progress, start_lr=start_lr
  )
  t_meta = time.perf_counter() - t0
  res = evaluate(config, init_params, lopt_params, tuning["best"], features_fn)
  lc = config.lopt
  info = (
    f"{len(res['classes'])} unseen test classes, K = {config.eval.k}, "
    f"{len(train_lib.parse_list(config.eval.adapt_seeds))} adaptation seed(s); mean "
    f"[95% bootstrap CI over classes]; p: paired sign-flip test over classes. All start "
    f"from the {lc.init} initialisation. Learned optimiser: MLP {lc.hidden} per "
    f"coordinate, meta-trained by {lc.estimator} for {lc.steps} meta-steps x {lc.tasks} "
    f"tasks (K={lc.k}, Q={lc.q}), unroll {lc.unroll}, horizon {lc.horizon}, pixel-MMD "
    f"meta-loss, starting as SGD({start_lr:g}) ({t_meta:.0f} s). SGD/Adam learning rates tuned per T on "
    f"{lc.n_val} validation-alphabet classes."
  )
  table = markdown_table(config, res["summary"], tuning["best"], info)
  out = {
    "table": table,
    "summary": res["summary"],
    "tuning": tuning,
    "rows": rows,
    "workdir": workdir,
    "lopt_params": lopt_params,
  }
  if not main:
    return {**out, "table": None, "wall_s": time.perf_counter() - t_start}
  eval_dir = os.path.join(workdir, "eval")
  plot(res["summary"], rows, os.path.join(eval_dir, "figures", "lopt_curve.png"))
  grid_t = max(res["summary"]["steps"])
  for kind, imgs in res["images"].items():  # 8 samples for each of the first classes
    n = min(config.eval.grid_classes, imgs[grid_t].shape[0])
    train_lib.save_png(
      os.path.join(eval_dir, "figures", f"samples_{kind}_T{grid_t}.png"),
      train_lib.image_grid(imgs[grid_t][:n, :8].reshape(-1, *imgs[grid_t].shape[2:])),
    )
  total = time.perf_counter() - t_start
  with open(os.path.join(eval_dir, "results.json"), "w") as f:
    json.dump(
      protocol.jsonable(
        {
          "summary": res["summary"],
          "tuning": tuning,
          "meta_training": rows,
          "featnet": feat_info,
          "wall_s": total,
        }
      ),
      f,
    )
  with open(os.path.join(eval_dir, "results.md"), "w") as f:
    f.write(table + f"\n\nWall time: {total:.0f} s (meta-training {t_meta:.0f} s).\n")
  write_summary(eval_dir, res["summary"], tuning, info, config.to_dict(), total)
  return {**out, "wall_s": total}


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  del argv
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  with mg.parallel.distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id):
    out = train_and_evaluate(FLAGS.config, FLAGS.workdir, progress=train_lib.is_main_process())
    if out["table"]:
      print(out["table"])
      print(f"\nWall time {out['wall_s']:.0f} s; outputs in {out['workdir']}/eval/")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments/configs/lopt_short.py"), "Experiment config file."
  )
  flags.DEFINE_string("workdir", "runs/lopt_short", "Output folder.")
  train_lib.define_process_flags()
  app.run(main)
