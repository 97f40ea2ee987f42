#!/bin/sh
# make valgrind: the core tests in one process (FLOWD_NO_FORK=1) under
# valgrind memcheck.  Fails on any memcheck error (invalid read/write, use of
# uninitialised values, bad free) or a definitely-lost block at exit.
# FLOWD_TEST=substring runs a subset (as for make test).  By default the
# statistical tests that run 5-90 s natively (~50x that under memcheck) are
# left out (FLOWD_TEST_EXCLUDE; set it empty to run everything): they drive
# the same code as the unit tests, only with more data and more steps.
# tests/valgrind.supp holds the suppressions (third-party code only).
BIN=${1:-build/rel/test_core}
export OPENBLAS_NUM_THREADS=1 FLOWD_NO_FORK=1
export FLOWD_TEST_EXCLUDE="${FLOWD_TEST_EXCLUDE-job_toy_sets_beat_a_gaussian,data_idx_gzip_bomb,train_uniform_dequantization_bits_per_dim,flow_density_integrates_to_one,vdeq_beats_uniform_bits_per_dim,train_gaussian_reaches_entropy,data_fashion_mnist}"
t0=$(date +%s)
valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite --num-callers=30 --suppressions=tests/valgrind.supp \
  "$BIN" test_core_valgrind; rc=$?
echo "valgrind: rc $rc, $(( $(date +%s) - t0 )) s"
exit $rc
