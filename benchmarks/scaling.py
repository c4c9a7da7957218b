"""Meta-steps/s of the standard workload on 1, 2 and 4 devices (data-parallel over tasks).

  python benchmarks/scaling.py                 # CPU: simulated host devices
  python benchmarks/scaling.py --devices 1,2,4,8 --algorithm reptile

On CPU the devices are ``--xla_force_host_platform_device_count=N`` host
devices that share the machine's cores; on a GPU/TPU host each real device
counts. Results go to ``benchmarks/results/scaling.jsonl``.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", default="1,2,4")
  p.add_argument("--algorithm", default="maml")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--T", type=int, default=8)
  args = p.parse_args()
  recs = []
  for n in [int(x) for x in args.devices.split(",")]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    out = subprocess.run([sys.executable, os.path.join(HERE, "maml_speed.py"), "--algorithm",
                          args.algorithm, "--T", str(args.T), "--steps", str(args.steps),
                          "--no-matmul"], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
      print(out.stderr[-2000:], file=sys.stderr)
      continue
    r = json.loads(lines[-1])
    recs.append(r)
    print(json.dumps({k: r[k] for k in ("num_devices", "algorithm", "T", "median_ms",
                                        "meta_steps_per_s", "tasks_per_s", "compile_s")}),
          flush=True)
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  with open(os.path.join(HERE, "results", "scaling.jsonl"), "w") as f:
    for r in recs:
      f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
