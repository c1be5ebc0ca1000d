#!/usr/bin/env bash
# Runs kiln's multi-rank tests under mpirun on the CPU (builds nothing: build kiln_parallel_tests
# and kiln first). For N in 2 and 4: the gtest binary. Then the dead-peer checks: a rank that
# exits or hangs mid-collective must make the job exit non-zero within the collective timeout;
# each run is guarded by `timeout`, so a hang fails the check instead of blocking the suite.
# (`kiln train` itself under mpirun is checked end to end by tests/e2e/test_zero_mpirun.sh.)
# Exit status non-zero on any failure; last line "parallel: N passed, M failed".
set -u
cd "$(dirname "$0")/.."
BIN=${KILN_PARALLEL_TESTS:-build/kiln_parallel_tests}
if [[ ! -x $BIN ]]; then
  echo "test-parallel: $BIN not found; build it with: cmake --build build --target kiln_parallel_tests"
  echo "parallel: 0 passed, 1 failed"
  exit 1
fi

# Containers: run as root, more ranks than cores, shared memory + loopback TCP only.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
MPIRUN=(mpirun --oversubscribe)
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kiln-parallel.XXXXXX")
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1 (log: $2)"; }

for n in 2 4; do
  log=$LOG_DIR/tests-np$n.log
  if timeout 300 "${MPIRUN[@]}" -np "$n" "$BIN" --gtest_color=no >"$log" 2>&1; then
    pass "kiln_parallel_tests -np $n ($(grep -o '[0-9]* tests\? from [0-9]* test suites\? ran' "$log"))"
  else
    grep -E '^\[  FAILED  \]|failure$' "$log" | sort -u | head -20
    fail "kiln_parallel_tests -np $n" "$log"
  fi
done

# The same collectives with MPI calls capped at 2 elements: every large-count path (rounds,
# strided all_gather, all_gather_v by broadcasts, reduce_scatter rounds) against closed forms.
log=$LOG_DIR/tests-np4-chunked.log
if KILN_MPI_MAX_COUNT=2 timeout 300 "${MPIRUN[@]}" -x KILN_MPI_MAX_COUNT -np 4 "$BIN" \
  --gtest_color=no --gtest_filter='Collectives.*:Groups.*' >"$log" 2>&1; then
  pass "kiln_parallel_tests -np 4, MPI counts capped at 2"
else
  grep -E '^\[  FAILED  \]|failure$' "$log" | sort -u | head -20
  fail "kiln_parallel_tests -np 4, MPI counts capped at 2" "$log"
fi

# Dead peer: rank 1 leaves (or hangs) between two all-reduces with a 3 s collective timeout.
# The job must end non-zero well within the 60 s guard (124 from timeout means it hung).
fault_timeout=3
for mode in exit finalize abort hang; do
  log=$LOG_DIR/fault-$mode.log
  start=$(date +%s)
  timeout 60 "${MPIRUN[@]}" -np 4 "$BIN" --kiln-fault=$mode --kiln-timeout=$fault_timeout \
    >"$log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  name="dead peer ($mode) -np 4: rc=$rc after ${took}s"
  if [[ $rc -eq 0 || $rc -eq 124 ]] || ((took > 30)); then
    fail "$name" "$log"
  elif [[ $mode == hang || $mode == finalize ]] &&
    ! grep -q "kiln: timeout after ${fault_timeout}s in all_reduce on group world (rank 0 of 4, world rank 0)" "$log"; then
    fail "$name, no timeout line from rank 0" "$log"
  else
    pass "$name"
  fi
done

echo "parallel: $passed passed, $failed failed"
if [[ $failed -eq 0 ]]; then rm -rf "$LOG_DIR"; else echo "logs kept in $LOG_DIR"; fi
[[ $failed -eq 0 ]]
