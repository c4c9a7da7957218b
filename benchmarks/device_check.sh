#!/usr/bin/env bash
# The accelerator check: every configuration in its own process with a timeout,
# one JSON line each, all in one results file. Finishes in under 5 minutes.
#
#   bash benchmarks/device_check.sh [--quick] [--out FILE] [--python PY]
#
# On a machine with a GPU/TPU run it as is (default out:
# benchmarks/results/device_check.jsonl). --quick runs the same matrix on the tiny
# workload with 2 timed steps and a reduced matrix (CPU, CI: under a minute). A configuration that fails
# or times out writes {"config": ..., "error": ...} and the others go on.
#
# Measured, per configuration (each line names its own):
#   standard workload (omniglot28-dcgan) maml and fomaml x vectorize map/vmap x
#   conv_impl matmul/xla on all devices, and each with the auto defaults on 1
#   device (against all devices: the line with the same resolved values); the dense
#   matmul rate of the same process (matmul_gflops_per_s in every line); the main
#   job's Reptile meta-step and its pre-training step (experiments/configs/
#   omniglot_short.py) with auto, map and vmap; the full protocol's FOMAML step.
set -u
cd "$(dirname "$0")/.."
QUICK=0
OUT=benchmarks/results/device_check.jsonl
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --python) PY=$2; shift ;;
    *) echo "unknown argument $1 (use --quick, --out FILE, --python PY)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

if [ $QUICK = 1 ]; then
  # The same machinery on CPU in under a minute: the tiny workload, first-order
  # meta-steps only (second-order compiles take ~10 s each here), the two formulations,
  # no matmul reference, 2 processes at once.
  STD="--workload tiny --steps 2 --warmup 1 --no-matmul"; MAIN="--steps 2 --warmup 1"; LIMIT=60
  PAR=2
  ALGS="fomaml"; MAINCFG=experiments/configs/tiny.py; FULLCFG=""
else
  STD="--steps 10 --warmup 2"; MAIN="--steps 5 --warmup 1"; LIMIT=120; PAR=1
  ALGS="maml fomaml"; MAINCFG=experiments/configs/omniglot_short.py
  FULLCFG=experiments/configs/omniglot_full.py
fi
START=$(date +%s)
BUDGET=270  # seconds: stop starting new configurations after this

run() {  # run NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  if [ $(( $(date +%s) - START )) -gt $BUDGET ]; then
    printf '{"config": "%s", "error": "skipped: the 5-minute budget is spent"}\n' "$name" >> "$OUT"
    return
  fi
  local log; log=$(mktemp)
  if timeout "$limit" "$@" > "$log" 2> "$log.err"; then
    local line; line=$(grep '^{' "$log" | tail -n 1)
    if [ -n "$line" ]; then
      printf '{"config": "%s", %s\n' "$name" "${line#\{}" >> "$OUT"
    else
      printf '{"config": "%s", "error": "no JSON line"}\n' "$name" >> "$OUT"
    fi
  else
    local rc=$? msg
    msg=$(tail -c 300 "$log.err" | tr '\n"\\' '   ')
    printf '{"config": "%s", "error": "exit %s: %s"}\n' "$name" "$rc" "$msg" >> "$OUT"
  fi
  echo "[device_check] $name ($(( $(date +%s) - START )) s)" >&2
  rm -f "$log" "$log.err"
}

launch() {  # like run, at most PAR at a time
  while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do wait -n; done
  run "$@" &
}

for alg in $ALGS; do
  for vec in map vmap; do
    for conv in matmul xla; do
      # quick: the two formulations (map + matmul, vmap + xla) only
      [ $QUICK = 1 ] && [ "$vec/$conv" != map/matmul ] && [ "$vec/$conv" != vmap/xla ] && continue
      launch "std_${alg}_${vec}_${conv}" $LIMIT $PY benchmarks/maml_speed.py $STD \
        --algorithm $alg --vectorize $vec --conv-impl $conv
    done
  done
  # quick (one CPU device): the same as map + matmul above
  [ $QUICK = 0 ] && launch "std_${alg}_auto_auto_1device" $LIMIT $PY benchmarks/maml_speed.py $STD \
    --algorithm $alg --devices 1
done
for vec in auto map vmap; do
  [ $QUICK = 1 ] && [ $vec != auto ] && continue
  launch "main_reptile_$vec" $LIMIT $PY benchmarks/main_job_step.py $MAIN --config $MAINCFG \
    --method reptile --vectorize $vec
done
launch "main_pretrain" $LIMIT $PY benchmarks/main_job_step.py $MAIN --config $MAINCFG \
  --method pretrain
[ -n "$FULLCFG" ] && launch "full_fomaml_auto" $LIMIT $PY benchmarks/main_job_step.py $MAIN \
  --config $FULLCFG --method fomaml
wait
echo "[device_check] $(wc -l < "$OUT") lines in $OUT ($(( $(date +%s) - START )) s)" >&2
