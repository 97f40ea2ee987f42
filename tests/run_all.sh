#!/bin/sh
# Runs every test binary of one build variant and prints one total line.
# BLAS is pinned to one thread so results are reproducible run to run.
BUILD=${BUILD:-build/rel}
export OPENBLAS_NUM_THREADS=1
tp=0; tf=0; status=0
for t in test_core test_core_f64 test_server; do
  [ -x "$BUILD/$t" ] || continue
  out=$("$BUILD/$t" "$t" 2>&1); rc=$?
  printf '%s\n' "$out"
  line=$(printf '%s\n' "$out" | tail -n 1)
  p=$(printf '%s' "$line" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
  f=$(printf '%s' "$line" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
  if [ -z "$p" ]; then echo "$t: crashed (rc $rc)"; f=1; p=0; fi
  tp=$((tp + p)); tf=$((tf + f))
  [ $rc -ne 0 ] && status=1
done
echo "total: $tp passed, $tf failed"
exit $status
