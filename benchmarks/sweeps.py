"""Runs the benchmark sweeps in fresh processes and writes JSONL, PNG plots and tables.

  python benchmarks/sweeps.py                      # everything (about 30 min on 2 CPU cores)
  python benchmarks/sweeps.py --only standard      # JAX vs PyTorch on the standard workload
  python benchmarks/sweeps.py --only k,T,order --steps 10

The interleaved JAX/PyTorch repeats (``results/standard_repeats.jsonl``) were
made with a shell loop of three rounds of ``maml_speed.py --no-matmul`` and
``torch_peer.py --impl func`` / ``--impl compile`` (maml, 20 steps each).

Each configuration runs in its own process (``maml_speed.py`` or
``torch_peer.py``), so ``peak_rss_mb`` is that configuration's own high-water
mark. Results go to ``benchmarks/results/<sweep>.jsonl``, plots to
``benchmarks/figures/``, and the markdown tables between the ``<!-- sweeps -->``
markers of ``docs/benchmarks.md`` (the benchmarks page) are regenerated from the JSONL files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
FIGURES = os.path.join(HERE, "figures")
KS = (1, 2, 5, 10, 20, 50)
TS = (1, 2, 4, 8, 16, 32)


def _run(script: str, *args: str) -> list[dict]:
  cmd = [sys.executable, os.path.join(HERE, script), *args]
  print("$", " ".join(cmd[1:]), flush=True)
  out = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}
  )
  recs = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  if out.returncode != 0 or not recs:
    print(out.stderr[-2000:], file=sys.stderr)
    return [
      {
        "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no output",
        "cmd": " ".join(args),
      }
    ]
  for r in recs:
    print(
      "  ",
      {
        k: r.get(k)
        for k in ("backend", "impl", "algorithm", "median_ms", "compile_s", "peak_rss_mb")
      },
      flush=True,
    )
  return recs


def _save(name: str, recs: list[dict]) -> None:
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f"{name}.jsonl"), "w") as f:
    for r in recs:
      f.write(json.dumps(r) + "\n")


def _load(name: str) -> list[dict]:
  path = os.path.join(RESULTS, f"{name}.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def sweep_standard(steps: int) -> None:
  """The standard workload: JAX (fast default and the plain formulation) and PyTorch."""
  s = str(steps)
  recs = []
  for alg in ("maml", "fomaml", "reptile"):
    recs += _run("maml_speed.py", "--algorithm", alg, "--steps", s)
    recs += _run("torch_peer.py", "--algorithm", alg, "--impl", "all", "--steps", s)
  recs += _run("maml_speed.py", "--algorithm", "metasgd", "--steps", s)
  _save("standard", recs)
  # The formulation ladder: from the straightforward version (flax convs, vmap
  # over tasks) to the library default (matmul convs, lax.map over tasks).
  ladder = []
  for impl, vec, n in (
    ("xla", "vmap", "3"),
    ("xla", "map", "5"),
    ("matmul", "vmap", "10"),
    ("matmul", "map", s),
  ):
    ladder += _run(
      "maml_speed.py",
      "--algorithm",
      "maml",
      "--conv-impl",
      impl,
      "--vectorize",
      vec,
      "--steps",
      n,
      "--warmup",
      "1",
      "--no-matmul",
    )
  _save("ladder", ladder)


def sweep_k(steps: int) -> None:
  recs = []
  for remat in (False, True):
    for k in KS:
      n = str(steps if k <= 10 else max(3, steps // 4))
      recs += _run(
        "maml_speed.py",
        "--inner-steps",
        str(k),
        "--steps",
        n,
        "--no-matmul",
        *(["--remat"] if remat else []),
      )
  for k in (5, 20):
    recs += _run(
      "maml_speed.py",
      "--inner-steps",
      str(k),
      "--loop",
      "unroll",
      "--steps",
      str(steps if k <= 10 else max(3, steps // 4)),
      "--no-matmul",
    )
  _save("k", recs)


def sweep_T(steps: int) -> None:
  recs = []
  for t in TS:
    recs += _run("maml_speed.py", "--T", str(t), "--steps", str(steps), "--no-matmul")
  _save("T", recs)


def sweep_order(steps: int) -> None:
  recs = []
  for alg in ("maml", "metasgd", "fomaml", "reptile"):
    for k in (1, 5, 20):
      recs += _run(
        "maml_speed.py",
        "--algorithm",
        alg,
        "--inner-steps",
        str(k),
        "--steps",
        str(steps if k <= 10 else max(3, steps // 4)),
        "--no-matmul",
      )
  _save("order", recs)


# --- figures and tables -------------------------------------------------------


def plots() -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(FIGURES, exist_ok=True)
  made = []
  ks = [r for r in _load("k") if "error" not in r and r.get("loop") == "scan"]
  if ks:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for remat, style in ((False, "o-"), (True, "s--")):
      rs = sorted((r for r in ks if r["remat"] == remat), key=lambda r: r["inner_steps"])
      lab = "remat" if remat else "no remat"
      x = [r["inner_steps"] for r in rs]
      axes[0].plot(x, [r["median_ms"] for r in rs], style, label=lab)
      axes[1].plot(x, [r["peak_rss_mb"] for r in rs], style, label=f"peak RSS, {lab}")
      axes[1].plot(
        x,
        [r.get("xla_temp_mb", float("nan")) for r in rs],
        style,
        alpha=0.5,
        label=f"XLA temp, {lab}",
      )
      axes[2].plot(x, [r["compile_s"] for r in rs], style, label=lab)
    for ax, title in zip(axes, ("ms / meta-step", "memory (MiB)", "compile (s)")):
      ax.set_xscale("log")
      ax.set_xlabel("inner steps k")
      ax.set_title(title)
      ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.suptitle("Second-order MAML, omniglot28-dcgan, T=8: cost vs inner steps")
    fig.tight_layout()
    path = os.path.join(FIGURES, "k_sweep.png")
    fig.savefig(path, dpi=110)
    made.append(path)
  ts = sorted((r for r in _load("T") if "error" not in r), key=lambda r: r["T"])
  if ts:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot([r["T"] for r in ts], [r["median_ms"] for r in ts], "o-")
    axes[0].set_title("ms / meta-step")
    axes[1].plot([r["T"] for r in ts], [r["tasks_per_s"] for r in ts], "o-")
    axes[1].set_title("tasks / s")
    for ax in axes:
      ax.set_xscale("log", base=2)
      ax.set_xlabel("tasks per meta-step T")
    axes[0].set_yscale("log")
    fig.suptitle("Second-order MAML, omniglot28-dcgan, k=5: cost vs T")
    fig.tight_layout()
    path = os.path.join(FIGURES, "T_sweep.png")
    fig.savefig(path, dpi=110)
    made.append(path)
  order = [r for r in _load("order") if "error" not in r]
  if order:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for alg in ("maml", "metasgd", "fomaml", "reptile"):
      rs = sorted((r for r in order if r["algorithm"] == alg), key=lambda r: r["inner_steps"])
      ax.plot([r["inner_steps"] for r in rs], [r["median_ms"] for r in rs], "o-", label=alg)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps k")
    ax.set_ylabel("ms / meta-step")
    ax.legend()
    ax.set_title("First vs second order, T=8")
    fig.tight_layout()
    path = os.path.join(FIGURES, "order.png")
    fig.savefig(path, dpi=110)
    made.append(path)
  return made


def _f(x, nd=1):
  return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def tables() -> str:
  out = []
  std = [r for r in _load("standard") if "error" not in r]
  if std:
    out.append("### Standard workload `omniglot28-dcgan` (T=8, K=Q=5, k=5), one session\n")
    out.append(
      "| algorithm | implementation | ms / meta-step (median [min, max]) | compile s | "
      "useful GFLOP/s | % of matmul | peak RSS MiB | speed-up vs fastest PyTorch |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for alg in ("maml", "metasgd", "fomaml", "reptile"):
      rs = [r for r in std if r["algorithm"] == alg]
      torch_best = min((r["median_ms"] for r in rs if r["backend"] == "torch"), default=None)
      for r in rs:
        name = (
          f"PyTorch {r.get('impl')}"
          if r["backend"] == "torch"
          else "JAX (library default)"
          if r.get("conv_impl") == "matmul"
          else f"JAX plain ({r.get('conv_impl')} convs, {r.get('vectorize')})"
        )
        frac = r.get("useful_fraction_of_matmul")
        speed = torch_best / r["median_ms"] if torch_best else None
        out.append(
          f"| {alg} | {name} | {_f(r['median_ms'], 0)} [{_f(r['min_ms'], 0)}, "
          f"{_f(r['max_ms'], 0)}] | {_f(r['compile_s'])} | "
          f"{_f(r['useful_gflops_per_s'])} | {_f(frac * 100 if frac else None, 0)} | "
          f"{_f(r['peak_rss_mb'], 0)} | {_f(speed, 2) + 'x' if speed else '-'} |"
        )
    mm = [
      r["matmul_gflops_per_s"]
      for r in std
      if r.get("matmul_gflops_per_s") and r["backend"] == "jax"
    ]
    if mm:
      out.append(
        f"\nDense float32 2048x2048 matmul in the same JAX processes: "
        f"{min(mm):.0f}-{max(mm):.0f} GFLOP/s.\n"
      )
  reps = [r for r in _load("standard_repeats") if "error" not in r]
  if reps:
    import statistics

    out.append("### Second-order MAML, JAX vs PyTorch, interleaved repeats (one session)\n")
    out.append(
      "Three rounds of (JAX, PyTorch `func`, PyTorch `compile`), each a fresh process "
      "timing 20 meta-steps, so that machine noise hits all three alike.\n"
    )
    out.append("| implementation | median ms per round | median of rounds | JAX speed-up |")
    out.append("|---|---|---|---|")
    names = {
      ("jax", None): "JAX (library default)",
      ("torch", "func"): "PyTorch `func`",
      ("torch", "compile"): "PyTorch `compile`",
    }
    med = {}
    for key in names:
      ms = [r["median_ms"] for r in reps if (r["backend"], r.get("impl")) == key]
      if ms:
        med[key] = statistics.median(ms)
    for key, name in names.items():
      if key in med:
        ms = [r["median_ms"] for r in reps if (r["backend"], r.get("impl")) == key]
        out.append(
          f"| {name} | {', '.join(f'{m:.0f}' for m in ms)} | {med[key]:.0f} | "
          f"{med[key] / med[('jax', None)]:.2f}x |"
        )
    out.append("")

  def section(name, title, header, row, key=None):
    """One markdown table of a sweep's records (if any), a row per record."""
    recs = [r for r in _load(name) if "error" not in r]
    if not recs:
      return
    out.append(f"### {title}\n")
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out.extend("| " + " | ".join(row(r)) + " |" for r in (sorted(recs, key=key) if key else recs))
    out.append("")

  section(
    "ladder",
    "From the straightforward formulation to the default (second-order MAML, standard workload)",
    ["convolutions", "tasks vectorised by", "ms / meta-step", "timed steps", "compile s"],
    lambda r: [
      "flax `nn.Conv`/`nn.ConvTranspose`"
      if r["conv_impl"] == "xla"
      else "im2col / scatter matmuls",
      "`jax.vmap`" if r["vectorize"] == "vmap" else "`lax.map`",
      _f(r["median_ms"], 0),
      str(r["steps"]),
      _f(r["compile_s"]),
    ],
  )
  section(
    "k",
    "Inner steps k (second-order MAML, T=8)",
    ["k", "loop", "remat", "ms / meta-step", "compile s", "peak RSS MiB", "XLA temp MiB"],
    lambda r: [
      str(r["inner_steps"]),
      str(r["loop"]),
      str(r["remat"]),
      _f(r["median_ms"], 0),
      _f(r["compile_s"]),
      _f(r["peak_rss_mb"], 0),
      _f(r.get("xla_temp_mb"), 1),
    ],
    key=lambda r: (r["loop"], r["remat"], r["inner_steps"]),
  )
  section(
    "T",
    "Tasks per meta-step T (second-order MAML, k=5)",
    ["T", "ms / meta-step", "tasks / s", "peak RSS MiB"],
    lambda r: [str(r["T"]), _f(r["median_ms"], 0), _f(r["tasks_per_s"]), _f(r["peak_rss_mb"], 0)],
    key=lambda r: r["T"],
  )
  section(
    "order",
    "First vs second order (T=8)",
    ["algorithm", "k", "ms / meta-step", "compile s", "useful GFLOP"],
    lambda r: [
      str(r["algorithm"]),
      str(r["inner_steps"]),
      _f(r["median_ms"], 0),
      _f(r["compile_s"]),
      _f(r["useful_gflop"], 2),
    ],
  )
  return "\n".join(out)


def write_readme() -> None:
  path = os.path.join(os.path.dirname(HERE), "docs", "benchmarks.md")
  text = (
    open(path).read()
    if os.path.exists(path)
    else "# Benchmarks\n\n<!-- sweeps -->\n<!-- /sweeps -->\n"
  )
  start, end = "<!-- sweeps -->", "<!-- /sweeps -->"
  if start not in text:
    text += f"\n{start}\n{end}\n"
  head, rest = text.split(start, 1)
  tail = rest.split(end, 1)[1]
  text = f"{head}{start}\n<!-- generated by benchmarks/sweeps.py from benchmarks/results/*.jsonl -->\n\n{tables()}\n{end}{tail}"
  with open(path, "w") as f:
    f.write(text)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--only",
    default="standard,k,T,order",
    help="comma-separated sweeps: standard, k, T, order; 'none' only redraws",
  )
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args()
  sweeps = {"standard": sweep_standard, "k": sweep_k, "T": sweep_T, "order": sweep_order}
  for name in args.only.split(","):
    if name in sweeps:
      sweeps[name](args.steps)
  print("figures:", plots())
  write_readme()
  print("tables written to docs/benchmarks.md")


if __name__ == "__main__":
  main()
