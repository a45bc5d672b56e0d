#!/bin/bash
# Two local sweep workers side by side on a 2-core machine: two 5-seed CCPO packs (native
# BallCircle, 7k steps, the workers' environment: one XLA device and one thread each), first
# unpinned, then pinned one core each (what saferl sweep --jobs 2 now does). Prints the seconds
# per 1,000 environment steps after the 5k warm-up steps, from each run's progress.csv.
# Usage: benchmarks/sweep_pinning.sh [REPEATS]   (nothing else may run meanwhile)
SCRATCH=$(mktemp -d); cd "$SCRATCH"
one() {  # $1 dir, $2 taskset prefix
  rm -rf $1
  XLA_FLAGS=--xla_force_host_platform_device_count=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $2 saferl train ccpo --env saferl/BallCircle-v0 --steps 7000 --seeds 0 1 2 3 4 --ccpo.behaviour-thresholds 20 40 60 --eval-episodes 0 --run-dir $1 --quiet
}
rate() {
python3 - "$1" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1] + "/progress.csv")))
pts = sorted({(int(r["env_steps"]), float(r["wall_time"])) for r in rows})
after = [p for p in pts if p[0] > 5400]
(s0, w0), (s1, w1) = after[0], after[-1]
print(sys.argv[1], "s/1000 steps after warm-up:", round((w1 - w0) / (s1 - s0) * 1000, 2))
PY
}
for _ in $(seq "${1:-3}"); do
  one "$SCRATCH/u0" "" & one "$SCRATCH/u1" "" & wait
  rate "$SCRATCH/u0"; rate "$SCRATCH/u1"
  one "$SCRATCH/p0" "taskset -c 0" & one "$SCRATCH/p1" "taskset -c 1" & wait
  rate "$SCRATCH/p0"; rate "$SCRATCH/p1"
done
