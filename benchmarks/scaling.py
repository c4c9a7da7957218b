"""Meta-steps/s of the standard workload on 1, 2 and 4 devices (data-parallel over tasks).

  python benchmarks/scaling.py                 # CPU: simulated host devices
  python benchmarks/scaling.py --devices 1,2,4,8 --algorithm reptile
  python benchmarks/scaling.py --processes     # CPU: 1 vs 2 processes, one core each

Two measurements:

* ``--devices``: one process with N devices. On CPU these are
  ``--xla_force_host_platform_device_count=N`` host devices that share the
  machine's cores (so this shows overhead, not speed-up); on a GPU/TPU host
  each real device counts.
* ``--processes``: real strong scaling on CPU. The same T-task meta-step runs
  in one process pinned to one core (``taskset``), then in P processes, each
  pinned to its own core with one device, joined by ``jax.distributed`` (gloo
  all-reduce of the meta-gradient). Needs P free cores.

Results go to ``benchmarks/results/scaling.jsonl`` (one line per configuration,
with ``num_devices``, ``num_processes`` and ``cores``).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHOW = (
  "num_devices",
  "num_processes",
  "cores",
  "algorithm",
  "T",
  "median_ms",
  "meta_steps_per_s",
  "tasks_per_s",
  "compile_s",
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _speed_cmd(args, cores=None) -> list:
  cmd = [
    sys.executable,
    os.path.join(HERE, "maml_speed.py"),
    "--algorithm",
    args.algorithm,
    "--T",
    str(args.T),
    "--steps",
    str(args.steps),
    "--no-matmul",
  ]
  if cores is not None:
    if not shutil.which("taskset"):
      raise SystemExit("--processes needs taskset (util-linux) to pin processes to cores.")
    cmd = ["taskset", "-c", cores] + cmd
  return cmd


def _record(stdout: str, stderr: str, rc: int, **extra) -> dict | None:
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  if rc or not lines:
    print(stderr[-2000:], file=sys.stderr)
    return None
  r = {**json.loads(lines[-1]), **extra}
  print(json.dumps({k: r.get(k) for k in SHOW}), flush=True)
  return r


def by_devices(args, devices: list[int]) -> list[dict]:
  recs = []
  for n in devices:
    env = {**os.environ, "PYTHONPATH": ROOT}
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    out = subprocess.run(_speed_cmd(args), cwd=ROOT, env=env, capture_output=True, text=True)
    r = _record(out.stdout, out.stderr, out.returncode, cores=os.cpu_count())
    if r:
      recs.append(r)
  return recs


def by_processes(args, num: int) -> list[dict]:
  """1 process on core 0, then ``num`` processes on cores 0..num-1, one device each."""
  if num > os.cpu_count():
    raise SystemExit(f"--processes needs {num} cores; this machine has {os.cpu_count()}.")
  base = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  out = subprocess.run(_speed_cmd(args, "0"), cwd=ROOT, env=base, capture_output=True, text=True)
  recs = [r for r in [_record(out.stdout, out.stderr, out.returncode, cores=1)] if r]
  env = {
    **base,
    "METAGAN_COORDINATOR": f"localhost:{_free_port()}",
    "METAGAN_NUM_PROCESSES": str(num),
  }
  procs = [
    subprocess.Popen(
      _speed_cmd(args, str(i)),
      cwd=ROOT,
      env={**env, "METAGAN_PROCESS_ID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(num)
  ]
  outs = [p.communicate() for p in procs]
  r = _record(outs[0][0], outs[0][1] + outs[-1][1], max(p.returncode for p in procs), cores=num)
  if r:
    recs.append(r)
  return recs


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--devices", default="1,2,4")
  p.add_argument(
    "--processes",
    nargs="?",
    type=int,
    const=2,
    default=None,
    help="measure 1 vs this many single-core processes instead (default 2)",
  )
  p.add_argument("--algorithm", default="maml")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--T", type=int, default=8)
  args = p.parse_args()
  if args.processes:
    recs, name = by_processes(args, args.processes), "scaling_processes.jsonl"
  else:
    recs, name = by_devices(args, [int(x) for x in args.devices.split(",")]), "scaling.jsonl"
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  with open(os.path.join(HERE, "results", name), "w") as f:
    for r in recs:
      f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
