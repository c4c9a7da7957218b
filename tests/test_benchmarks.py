"""The benchmark scripts run on a tiny workload and print every promised field."""

import json
import os
import subprocess
import sys

import jax

from benchmarks import common
from tests.helpers import HANG_TIMEOUT_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  out = subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=HANG_TIMEOUT_S,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  return [json.loads(l) for l in lines]


def test_maml_speed_json_has_every_field():
  (rec,) = _run(
    "benchmarks/maml_speed.py",
    "--workload",
    "tiny",
    "--algorithm",
    "maml",
    "--steps",
    "2",
    "--warmup",
    "1",
  )
  missing = [f for f in common.REQUIRED_FIELDS if f not in rec]
  assert not missing
  assert rec["backend"] == "jax" and rec["T"] == 2 and rec["inner_steps"] == 2
  assert rec["min_ms"] <= rec["median_ms"] <= rec["max_ms"]
  assert abs(rec["useful_gflop"] - common.useful_gflop(common.WORKLOADS["tiny"], "maml")) < 1e-3
  assert rec["matmul_gflops_per_s"] > 0 and rec["peak_rss_mb"] > 0


def test_useful_flop_formula_by_hand():
  # dcgan28 forward MACs per sample: G 64*3136 + 49*16*64*32 + 196*16*32, D 196*16*32 + 49*16*32*64 + 3136.
  g, d = common.dcgan28_layer_macs()
  assert sum(g) == 200_704 + 1_605_632 + 100_352
  assert sum(d) == 100_352 + 1_605_632 + 3_136
  w = common.WORKLOADS["omniglot28-dcgan"]
  first = common.useful_gflop(w, "fomaml")
  # Second order adds two reverse passes through the inner loop at 2x its forward cost.
  assert common.useful_gflop(w, "maml") > 4 * common.useful_gflop(w, "reptile")
  assert common.useful_gflop(w, "reptile") < first


def test_device_check_quick_writes_one_json_line_per_configuration(tmp_path):
  out = tmp_path / "device_check.jsonl"
  proc = subprocess.run(
    [
      "bash",
      os.path.join(ROOT, "benchmarks", "device_check.sh"),
      "--quick",
      "--out",
      str(out),
      "--python",
      sys.executable,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=3600,
    # deadlines for a machine 3x slower than ours and busy with other
    # tests (about 45 s alone here); the defaults are for an accelerator
    env={**os.environ, "DEVICE_CHECK_LIMIT_S": "900", "DEVICE_CHECK_BUDGET_S": "1800"},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  names = [l["config"] for l in lines]
  assert sorted(names) == sorted(
    ["std_fomaml_map_matmul", "std_fomaml_vmap_xla", "main_reptile_auto", "main_pretrain"]
  ), names
  for l in lines:
    assert "error" not in l, l
    assert l["median_ms"] > 0 and l["compile_s"] > 0
  std = {l["config"]: l for l in lines if l["config"].startswith("std_")}
  assert std["std_fomaml_vmap_xla"]["vectorize_resolved"] == "vmap"
  assert std["std_fomaml_map_matmul"]["conv_impl_resolved"] == "matmul"
  want = "map" if jax.default_backend() == "cpu" else "vmap"
  assert {l["config"]: l for l in lines}["main_reptile_auto"]["vectorize_resolved"] == want
