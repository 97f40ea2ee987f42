#!/bin/sh
# Runs the libFuzzer harnesses one after another for SECONDS each and prints
# one line per harness: executions, corpus size, crashes.
#   fuzz/run.sh BUILD_DIR SECONDS [harness...]
# Each harness mutates a working corpus under BUILD_DIR/corpus/<name>
# (seeded from fuzz/corpus/<name>, which stays untouched); a crash, leak,
# timeout or out-of-memory input is written to BUILD_DIR/artifacts/<name>/.
# Exit status 1 if any harness found something.
set -u
dir=$1; secs=$2; shift 2
names=${*:-csv npy idx json_rows model flow_spec params job train_state request}
export OPENBLAS_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for n in $names; do
  case $n in
    model|params|train_state) maxlen=16384 ;;
    flow_spec|job) maxlen=2048 ;;
    *) maxlen=4096 ;;
  esac
  mkdir -p "$dir/corpus/$n" "$dir/artifacts/$n"
  log="$dir/fuzz_$n.log"
  "$dir/fuzz_$n" "$dir/corpus/$n" "fuzz/corpus/$n" -max_total_time="$secs" -max_len=$maxlen \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$dir/artifacts/$n/" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [ -n "$execs" ] || execs=$(sed -n 's/.*#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  corpus=$(ls "$dir/corpus/$n" | wc -l)
  found=$(ls "$dir/artifacts/$n" | grep -c -E '^(crash|leak|timeout|oom|slow-unit)-' || true)
  line=$(printf '%-12s %10s execs %6s corpus %3s crashes' "$n" "${execs:-?}" "$corpus" "$found")
  if [ $rc -ne 0 ] || [ "$found" -ne 0 ]; then
    status=1
    line="$line   FAILED (rc $rc, see $log)"
    grep -m 3 -E 'ERROR: |runtime error|SUMMARY' "$log" | sed 's/^/    /'
  fi
  echo "$line"
done
[ $status -eq 0 ] && echo "fuzz: no crashes ($secs s per harness)" || echo "fuzz: FAILED"
exit $status
