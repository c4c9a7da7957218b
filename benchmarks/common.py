"""Shared pieces of the benchmark scripts: workloads, FLOP counts, timing, JSON.

Both ``maml_speed.py`` (JAX) and ``torch_peer.py`` (PyTorch) import this file so
that the two report exactly the same workload with the same formulas.

Useful FLOPs (``useful_gflop``) are counted analytically from the architecture,
as 2 x multiply-adds of the matrix products a meta-step mathematically needs:

* a dense layer ``n_in -> n_out``: ``n_in * n_out`` MACs per sample;
* a convolution: ``H_out * W_out * k * k * C_in * C_out`` MACs per sample
  (the usual convention: taps on the zero padding border count);
* a transposed convolution: ``H_in * W_in * k * k * C_in * C_out`` MACs per
  sample, i.e. every input pixel times every kernel tap. The zeros that a
  "dilate the input, then convolve" implementation inserts are *not* counted.

Per layer, a forward pass on ``N`` samples costs ``F = 2 * N * MACs``; its
weight gradient costs ``F`` and its input gradient ``F`` (only where needed:
not for the first layer of a network whose input is data or a constant).
One inner step (``d_steps`` = ``g_steps`` = 1, ``n_fake`` = K):

* D update: G forward on K, D forward on 2K (real + fake), D weight grads on
  2K, D input grads on 2K above the first layer;
* G update: G forward on K, D forward on K, D input grads on K (all layers),
  G weight grads on K, G input grads on K above the first layer.

The query evaluation is G forward on Q and D forward on 2Q. First-order
algorithms (``fomaml``, ``reptile``) cost ``k * step + query`` plus, for
fomaml, the backward of the query losses through the adapted pair. Second order
(``maml``, ``metasgd``) additionally differentiates the whole inner-loop graph
once per meta-loss (L_D and L_G need separate reverse passes: they are
different scalars); reverse mode through a graph of matrix products costs two
products per product, so each reverse pass is counted as 2 x the inner-loop
FLOPs. Elementwise work (activations, losses, optimiser arithmetic) is not
counted. Everything is per meta-step, i.e. multiplied by T.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Workload:
  """A named meta-learning benchmark workload (dcgan28 unless stated)."""

  name: str
  T: int = 8
  K: int = 5
  Q: int = 5
  inner_steps: int = 5
  inner_lr: float = 0.05
  outer_lr: float = 1e-4
  z_dim: int = 64
  image_hw: int = 28
  channels: int = 1


WORKLOADS = {
  # The standard workload of the project (issue 3).
  "omniglot28-dcgan": Workload("omniglot28-dcgan"),
  # A tiny one for tests: same architecture, few tasks and steps.
  "tiny": Workload("tiny", T=2, K=2, Q=2, inner_steps=2),
}

# Fields every benchmark JSON line carries.
REQUIRED_FIELDS = (
  "backend",
  "device",
  "compile_s",
  "median_ms",
  "min_ms",
  "max_ms",
  "meta_steps_per_s",
  "tasks_per_s",
  "peak_rss_mb",
  "useful_gflop",
  "useful_gflops_per_s",
  "matmul_gflops_per_s",
)


def dcgan28_layer_macs(z_dim: int = 64, channels: int = 1):
  """Per-sample multiply-adds of each dcgan28 layer: ``(G layers, D layers)``.

  Lists run from the network's input to its output.
  """
  g = [
    z_dim * 7 * 7 * 64,  # fc
    7 * 7 * 4 * 4 * 64 * 32,  # deconv1: H_in * W_in * k * k * C_in * C_out
    14 * 14 * 4 * 4 * 32 * channels,  # deconv2
  ]
  d = [
    14 * 14 * 4 * 4 * channels * 32,  # conv1: H_out * W_out * k * k * C_in * C_out
    7 * 7 * 4 * 4 * 32 * 64,  # conv2
    7 * 7 * 64 * 1,  # fc
  ]
  return g, d


def useful_gflop(w: Workload, algorithm: str) -> float:
  """Analytic useful GFLOP of one meta-step (formula in the module docstring)."""
  g, d = dcgan28_layer_macs(w.z_dim, w.channels)
  sg, sd = sum(g), sum(d)
  K, Q = w.K, w.Q
  fwd = lambda macs, n: 2 * n * macs
  d_update = fwd(sg, K) + fwd(sd, 2 * K) + fwd(sd, 2 * K) + fwd(sd - d[0], 2 * K)
  g_update = fwd(sg, K) + fwd(sd, K) + fwd(sd, K) + fwd(sg, K) + fwd(sg - g[0], K)
  inner = w.inner_steps * (d_update + g_update)
  query = fwd(sg, Q) + fwd(sd, 2 * Q)
  # Backward of the two query losses through the adapted pair (D: weights on
  # 2Q, inputs above conv1; G loss: D inputs on Q, G weights and inputs).
  query_bwd = fwd(sd, 2 * Q) + fwd(sd - d[0], 2 * Q) + fwd(sd, Q) + fwd(sg, Q) + fwd(sg - g[0], Q)
  if algorithm == "reptile":
    per_task = inner + query
  elif algorithm == "fomaml":
    per_task = inner + query + query_bwd
  elif algorithm in ("maml", "metasgd"):
    per_task = inner + query + query_bwd + 2 * (2 * inner)
  else:
    raise ValueError(f"Unknown algorithm {algorithm!r}.")
  return w.T * per_task / 1e9


def peak_rss_mb() -> float:
  """Peak resident set size of this process in MiB (Linux reports KiB)."""
  r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return r / 1024 if sys.platform.startswith("linux") else r / 2**20


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
  except OSError:
    pass
  return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def time_steps(step: Callable[[], None], steps: int, warmup: int = 2) -> dict:
  """Runs ``step`` (which must block until done) and returns timing statistics in ms."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append((time.perf_counter() - t0) * 1e3)
  return {
    "median_ms": statistics.median(times),
    "min_ms": min(times),
    "max_ms": max(times),
    "steps": steps,
  }


def finish(record: dict, w: Workload, algorithm: str) -> dict:
  """Adds the derived throughput fields to ``record`` (which has median_ms)."""
  sec = record["median_ms"] / 1e3
  gflop = useful_gflop(w, algorithm)
  record.update(
    {
      "meta_steps_per_s": 1.0 / sec,
      "tasks_per_s": w.T / sec,
      "useful_gflop": gflop,
      "useful_gflops_per_s": gflop / sec,
      "peak_rss_mb": peak_rss_mb(),
    }
  )
  if record.get("matmul_gflops_per_s"):
    record["useful_fraction_of_matmul"] = (
      record["useful_gflops_per_s"] / record["matmul_gflops_per_s"]
    )
  return record


def emit(record: dict, required: tuple[str, ...] = REQUIRED_FIELDS) -> None:
  """Prints one JSON line (floats rounded for reading); ``required`` fields must be there."""
  out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
  missing = [f for f in required if f not in out]
  if missing:
    raise RuntimeError(f"benchmark record lacks fields {missing}")
  print(json.dumps(out), flush=True)
