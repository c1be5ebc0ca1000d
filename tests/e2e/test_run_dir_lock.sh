#!/usr/bin/env bash
# Two trainers on one run directory: the second exits 2 at once naming the first (pid, host);
# the lock goes with the holder, also when it is killed with SIGKILL, and the next run resumes.
# KILN_TEST_STEP_SLEEP_S (tests only) makes each step last long enough to overlap the runs.
source "$(dirname "$0")/lib.sh"
make_tiny
KILN_TEST_STEP_SLEEP_S=0.5 "$KILN" train "$WORK/tiny.yaml" --set checkpoint.every=1 >"$WORK/first.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  grep -q "pid $pid on host" "$WORK/run/kiln.lock" 2>/dev/null && [ -f "$WORK/run/metrics.jsonl" ] && break
  kill -0 $pid 2>/dev/null || { cat "$WORK/first.log"; die "first trainer ended early"; }
  sleep 0.05
done
start=$(date +%s)
set +e; out=$("$KILN" train "$WORK/tiny.yaml" 2>&1); rc=$?; set -e
took=$(($(date +%s) - start))
[ "$rc" = 2 ] || die "second trainer exited $rc, expected 2: $out"
echo "$out" | tail -1 | grep -q "kiln train: error: train.run_dir: $WORK/run is in use by another kiln train (pid $pid on host $(hostname) since " \
  || die "second trainer's error does not name the holder: $(echo "$out" | tail -1)"
[ "$took" -le 10 ] || die "second trainer took ${took}s to refuse"
echo "ok: $(echo "$out" | tail -1)"
kill -0 $pid 2>/dev/null || die "the first trainer did not survive the second"
kill -9 $pid; wait $pid 2>/dev/null || true
# The OS released the lock with the killed process: a new trainer takes it and resumes.
"$KILN" train "$WORK/tiny.yaml" --set checkpoint.every=1 >"$WORK/third.log" 2>&1 || { cat "$WORK/third.log"; die "after SIGKILL"; }
grep -q "resumed from" "$WORK/third.log" || die "third run did not resume"
[ ! -s "$WORK/run/kiln.lock" ] || die "a finished run left its holder line: $(cat "$WORK/run/kiln.lock")"
echo "run dir lock: second trainer refused in ${took}s, released on SIGKILL"
