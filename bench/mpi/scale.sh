#!/bin/sh
# bench/mpi/scale.sh (make bench-mpi): data-parallel flowd train on W2 (maf,
# 5 MADE [1024], 784-D standard Gaussian rows, batch 128, 12.06M parameters)
# at 1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread, and the
# MPI_Allreduce of its 12M-float gradient alone (bench/mpi/mpi_allreduce.c)
# under OpenMPI's default algorithm choice and the ring flowd uses.
# Prints one line per run; docs/scale-out.md has the numbers and the model.
#   ROUNDS (default 2): rounds of the three configurations, alternating
#   EPOCHS (default 3): epochs of 25 steps per run
set -eu
BUILD=${BUILD:-build/rel}
ROUNDS=${ROUNDS:-2}
EPOCHS=${EPOCHS:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe"
dir=$(mktemp -d /tmp/flowd_mpibench_XXXXXX)
trap 'rm -rf "$dir"' EXIT
# 3328 rows x 784 of N(0,1) float32 as .npy (no numpy needed)
python3 - "$dir/w2.npy" <<'PY'
import array, random, sys
n, d = 3328, 784
random.seed(0)
a = array.array('f', (random.gauss(0, 1) for _ in range(n * d)))
h = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, d)
h += ' ' * (64 - (10 + len(h) + 1) % 64) + '\n'
with open(sys.argv[1], 'wb') as f:
    f.write(b'\x93NUMPY\x01\x00' + len(h).to_bytes(2, 'little') + h.encode())
    a.tofile(f)
PY
cat > "$dir/w2.json" <<JSON
{"model":"w2","dataset":{"path":"$dir/w2.npy","format":"auto"},
 "flow":{"preset":"maf","depth":5,"hidden":[1024]},
 "train":{"epochs":$EPOCHS,"batch_size":128,"lr":0.0005,"val_fraction":0.04,"seed":1,"log_every":5}}
JSON
echo "load before: $(cat /proc/loadavg)"
for alg in default ring; do
  if [ $alg = ring ]; then extra="--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4"
  else extra="--mca coll_tuned_use_dynamic_rules 0"; fi
  printf '%s: ' $alg
  $MPIRUN $extra -n 2 "$BUILD/mpi_allreduce" 12055200 20 | tail -n 1
done
# samples/s: the median of the progress reports after the first (training
# steps only: validation, rank 0's, is not in them) and the metrics' figure
# (the whole run, validations included)
run() { # label, command...
  label=$1; shift
  "$@" train -c "$dir/w2.json" -o "$dir/m.flow" >"$dir/out" 2>"$dir/err"
  med=$(grep '^step' "$dir/err" | sed -n 's/.*samples_per_s=\([0-9.]*\).*/\1/p' | tail -n +2 | sort -n |
        awk '{v[NR]=$1} END {print (NR ? v[int((NR+1)/2)] : "nan")}')
  m=$(sed -n 's/^metrics //p' "$dir/out")
  run_sps=$(printf '%s' "$m" | sed -n 's/.*"samples_per_second":\([0-9.e+-]*\).*/\1/p')
  ar=$(printf '%s' "$m" | sed -n 's/.*"allreduce_ms_per_step":\([0-9.e+-]*\).*/\1/p')
  echo "$label steps_samples_per_s=$med run_samples_per_s=$run_sps allreduce_ms_per_step=${ar:-0} load=$(cut -d' ' -f1 /proc/loadavg)"
}
r=1
while [ $r -le "$ROUNDS" ]; do
  run "1rank_x_1thread " sh -c "exec $BUILD/flowd \"\$@\" --threads 1" sh
  run "1rank_x_2threads" sh -c "exec $BUILD/flowd \"\$@\" --threads 2" sh
  run "2ranks_x_1thread" sh -c "exec $MPIRUN -n 2 $BUILD/flowd \"\$@\" --threads 1" sh
  r=$((r + 1))
done
echo "load after: $(cat /proc/loadavg)"
