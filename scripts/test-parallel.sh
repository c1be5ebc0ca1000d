#!/usr/bin/env bash
# Runs kiln's multi-rank tests under mpirun on the CPU (builds nothing: build kiln_parallel_tests
# and kiln first). For N in 2 and 4: the gtest binary. Then the dead-peer checks: a rank that
# exits or hangs mid-collective must make the job exit non-zero within the collective timeout;
# each run is guarded by `timeout`, so a hang fails the check instead of blocking the suite.
# Last, `kiln train` under mpirun with ZeRO 0-3 against the one-process losses.
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

# The trainer as a user runs it: `mpirun -np N build/kiln train` with ZeRO 0-3 at dp = 2 and 4
# must log the losses of the one-process run (metrics.jsonl, relative 1e-5), tied embeddings on.
KILN=${KILN_BIN:-build/kiln}
if [[ ! -x $KILN ]]; then
  fail "kiln train under mpirun: $KILN not found (build the kiln target)" "-"
else
  e2e=$LOG_DIR/train
  mkdir -p "$e2e"
  cp tests/fixtures/data/{data.json,pretrain.jsonl,sft_firefly.jsonl} "$e2e/"
  grep -v '^$' tests/fixtures/data/tokenizer_corpus.txt >"$e2e/corpus.txt"
  spm_train --input="$e2e/corpus.txt" --model_prefix="$e2e/tok" --vocab_size=700 \
    --hard_vocab_limit=false --character_coverage=1.0 --num_threads=1 >"$e2e/spm.log" 2>&1
  cat >"$e2e/cfg.yaml" <<YAML
model: {vocab_size: 700, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2,
        max_seq_len: 64, tie_embeddings: true}
tokenizer: $e2e/tok.model
data: {mixture: $e2e/data.json, seq_len: 32, prefetch: 1}
train: {steps: 5, micro_batch_size: 1, global_batch_size: 8, lr: 0.01, min_lr: 0.001,
        warmup_steps: 1, log_every: 100, threads: 1}
YAML
  losses() { grep -o '"loss":[-0-9.e+]*' "$1/metrics.jsonl" | cut -d: -f2; }
  if ! timeout 120 "$KILN" train "$e2e/cfg.yaml" --set train.run_dir="$e2e/ref" >"$e2e/ref.log" 2>&1; then
    fail "kiln train, one process" "$e2e/ref.log"
  else
    for zero in 0 1 2 3; do
      for n in 2 4; do
        run=$e2e/zero$zero-np$n
        name="kiln train -np $n parallel.zero=$zero: losses of one process"
        if ! timeout 120 "${MPIRUN[@]}" -np "$n" "$KILN" train "$e2e/cfg.yaml" \
          --set train.run_dir="$run" --set parallel.zero=$zero >"$run.log" 2>&1; then
          fail "$name (exit status)" "$run.log"
        elif paste <(losses "$e2e/ref") <(losses "$run") | awk -v steps=5 '
            { d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1; n++ }
            END { exit (bad || n != steps) }'; then
          pass "$name"
        else
          paste <(losses "$e2e/ref") <(losses "$run") | head -5
          fail "$name" "$run.log"
        fi
      done
    done
  fi
fi

echo "parallel: $passed passed, $failed failed"
if [[ $failed -eq 0 ]]; then rm -rf "$LOG_DIR"; else echo "logs kept in $LOG_DIR"; fi
[[ $failed -eq 0 ]]
