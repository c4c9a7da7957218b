"""Two hot spots of the protocol's tuning and evaluation, old formulation against new; JSON lines.

  python benchmarks/protocol_time.py [--config experiments/configs/omniglot_short.py] [--repeats 3]

- ``sampling``: 64 samples for each of 20 classes from per-class generators (and from one
  shared G, and truncated), as one ``vmap`` over the classes against the protocol's
  ``lax.map`` (``experiments/protocol/scoring._generate``).
- ``lowdata_cnn``: the anchors' low-data CNN (``eval.cnn_steps`` steps on 20 x (4 + 64)
  images), one jitted call per step against the protocol's single compiled loop.

Old and new alternate; each line gives both times, their ratio and the largest difference
of the outputs. Random parameters and images of the config's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.main_job_step import load_config  # noqa: E402
from experiments import train_lib  # noqa: E402
from experiments.protocol import scoring  # noqa: E402


def _timed(fns: dict, repeats: int) -> tuple[dict, dict]:
  out = {name: f() for name, f in fns.items()}  # warm-up (compiles)
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, f in fns.items():
      t0 = time.perf_counter()
      out[name] = f()
      times[name].append(time.perf_counter() - t0)
  return out, times


def _line(bench: str, case: str, out: dict, times: dict) -> dict:
  old, new = np.median(times["old"]), np.median(times["new"])  # times in the order run
  diff = max(
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(jax.tree.leaves(out["old"]), jax.tree.leaves(out["new"]))
  )
  return {
    "benchmark": bench,
    "case": case,
    "old_s": [round(t, 4) for t in times["old"]],
    "new_s": [round(t, 4) for t in times["new"]],
    "ratio_of_medians": round(old / new, 3),
    "max_abs_diff": diff,
    "device": f"cpu: {common.cpu_name()}",
  }


def sampling(config, repeats: int, C: int = 20, n: int = 64):
  model = train_lib.get_model(config)
  cj = json.dumps(config.to_dict(), sort_keys=True)
  gs = jax.vmap(lambda k: model.init(k).g)(jax.random.split(jax.random.key(0), C))
  g0 = jax.tree.map(lambda x: x[0], gs)
  z = jax.random.normal(jax.random.key(1), (C, n, model.z_dim))
  z_avg = jax.random.normal(jax.random.key(2), (2048, model.z_dim))
  psi = jnp.float32(0.8)
  cases = {
    "per_class": (jax.jit(jax.vmap(model.generate)), scoring._generate(cj, True), (gs, z)),  # pylint: disable=protected-access
    "shared_g": (
      jax.jit(jax.vmap(model.generate, in_axes=(None, 0))),
      scoring._generate(cj, False),
      (g0, z),
    ),  # pylint: disable=protected-access
    "truncated": (
      jax.jit(jax.vmap(model.generate_truncated, in_axes=(0, 0, None, None))),
      scoring._generate_truncated(cj, True),
      (gs, z, psi, z_avg),
    ),  # pylint: disable=protected-access
  }
  for case, (old, new, args) in cases.items():
    out, times = _timed(
      {"old": lambda: np.asarray(old(*args)), "new": lambda: np.asarray(new(*args))}, repeats
    )
    yield _line("sampling", case, out, times)


def lowdata_cnn(config, repeats: int, C: int = 20, K: int = 4, n: int = 64):
  ec = config.eval
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (C * (K + n), 28, 28, 1)).astype(np.float32))
  y = jnp.asarray(np.concatenate([np.repeat(np.arange(C), K), np.repeat(np.arange(C), n)]))
  init, opt_init, train, _, step = scoring._cnn_fns(
    C,
    int(ec.cnn_batch),
    float(ec.cnn_lr),  # pylint: disable=protected-access
    float(ec.cnn_shift),
  )
  jstep, steps = jax.jit(step), int(ec.cnn_steps)
  key = jax.random.key(0)
  p0, k_steps = init(key, x), jax.random.fold_in(key, 1)

  def per_step():
    p, s = p0, opt_init(p0)
    for i in range(steps):
      p, s = jstep(p, s, x, y, jax.random.fold_in(k_steps, i))
    return jax.block_until_ready(p)

  def loop():
    return jax.block_until_ready(train(p0, opt_init(p0), x, y, steps, k_steps)[0])

  out, times = _timed({"old": per_step, "new": loop}, repeats)
  yield _line("lowdata_cnn", f"{steps} steps", out, times)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", default=os.path.join(ROOT, "experiments/configs/omniglot_short.py"))
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  config = load_config(args.config)
  for line in (*sampling(config, args.repeats), *lowdata_cnn(config, args.repeats)):
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
