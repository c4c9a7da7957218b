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
# DEVICE_CHECK_LIMIT_S (default 120) and DEVICE_CHECK_BUDGET_S (default 280) set
# the per-configuration and total deadlines in seconds.
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
OUT=""
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --python) PY=$2; shift ;;
    *) echo "unknown argument $1 (use --quick, --out FILE, --python PY)" >&2; exit 2 ;;
  esac
  shift
done
# --quick never overwrites the accelerator's results.
[ -z "$OUT" ] && { [ $QUICK = 1 ] && OUT=benchmarks/results/device_check_quick.jsonl \
                                 || OUT=benchmarks/results/device_check.jsonl; }
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

if [ $QUICK = 1 ]; then
  # The same machinery on CPU in under a minute: the tiny workload, first-order
  # meta-steps only (second-order compiles take ~10 s each here), the two formulations,
  # no matmul reference, 2 processes at once.
  STD="--workload tiny --steps 2 --warmup 1 --no-matmul"; MAIN="--steps 2 --warmup 1"; LIMIT=120
  PAR=2  # about 45 s alone on 2 cores; the long timeout is for a machine busy with other tests
  ALGS="fomaml"; MAINCFG=experiments/configs/tiny.py; FULLCFG=""
else
  STD="--steps 10 --warmup 2"; MAIN="--steps 5 --warmup 1"; LIMIT=120; PAR=1
  ALGS="maml fomaml"; MAINCFG=experiments/configs/omniglot_short.py
  FULLCFG=experiments/configs/omniglot_full.py
fi
# Deadlines (seconds), settable for slow or busy machines: DEVICE_CHECK_LIMIT_S per
# configuration, DEVICE_CHECK_BUDGET_S for the whole check (none starts or runs past it).
LIMIT=${DEVICE_CHECK_LIMIT_S:-$LIMIT}
START=$(date +%s)
BUDGET=${DEVICE_CHECK_BUDGET_S:-280}

error_line() {  # NAME MESSAGE -> one valid JSON line, whatever the message holds
  "$PY" -c 'import json, sys; print(json.dumps({"config": sys.argv[1], "error": sys.argv[2]}))' \
    "$1" "$2" >> "$OUT"
}

run() {  # run NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ $left -lt 15 ]; then
    error_line "$name" "skipped: the 5-minute budget is spent"
    return
  fi
  [ $left -lt "$limit" ] && limit=$left  # no configuration runs past the budget
  local log; log=$(mktemp)
  if timeout -k 5 "$limit" "$@" > "$log" 2> "$log.err"; then
    local line; line=$(grep '^{' "$log" | tail -n 1)
    if [ -n "$line" ]; then
      printf '{"config": "%s", %s\n' "$name" "${line#\{}" >> "$OUT"
    else
      error_line "$name" "no JSON line in the output"
    fi
  else
    local rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then
      error_line "$name" "timeout after ${limit} s"
    else
      error_line "$name" "exit $rc: $(tail -c 400 "$log.err" | tr -d '\000-\010\013-\037')"
    fi
  fi
  echo "[device_check] $name ($(( $(date +%s) - START )) s)" >&2
  rm -f "$log" "$log.err"
}

launch() {  # like run, at most PAR at a time
  while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do wait -n; done
  run "$@" &
}

# The main job's steps first: they are what a 15-minute device lease is for.
for vec in auto map vmap; do
  [ $QUICK = 1 ] && [ $vec != auto ] && continue
  launch "main_reptile_$vec" $LIMIT $PY benchmarks/main_job_step.py $MAIN --config $MAINCFG \
    --method reptile --vectorize $vec
done
launch "main_pretrain" $LIMIT $PY benchmarks/main_job_step.py $MAIN --config $MAINCFG \
  --method pretrain
[ -n "$FULLCFG" ] && launch "full_fomaml_auto" $LIMIT $PY benchmarks/main_job_step.py $MAIN \
  --config $FULLCFG --method fomaml
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
wait
echo "[device_check] $(wc -l < "$OUT") lines in $OUT ($(( $(date +%s) - START )) s)" >&2
