#!/usr/bin/env bash
# A run killed with SIGKILL mid-training and resumed produces exactly the losses and final
# weights of the run that was never interrupted; a SIGTERM saves a checkpoint of the step it
# lands in and exits 0, and resuming from it gives the same losses too.
# Both signals land at a known point: KILN_TEST_PAUSE_AFTER_STEP=N (trainer/test_hooks.h) holds
# the trainer after step N's metrics row, before its checkpoint, until a signal comes.
source "$(dirname "$0")/lib.sh"
make_tiny
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/whole" >/dev/null 2>&1 || die "uninterrupted run"
# kiln eval prints exactly one JSON line on stdout (logs go to stderr): its eval set's loss.
"$KILN" eval "$WORK/tiny.yaml" --set train.run_dir="$WORK/whole" >"$WORK/eval.out" 2>"$WORK/eval.err" || die "eval"
python3 - "$WORK/eval.out" "$WORK/pretrain.jsonl" <<'PY' || die "kiln eval stdout: $(cat "$WORK/eval.out")"
import json, math, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
r = json.loads(lines[0])
assert sorted(r) == ["loss", "tokens"], r
assert math.isfinite(r["loss"]) and 0 < r["loss"] < math.log(700), r  # trained: below uniform
assert isinstance(r["tokens"], int) and r["tokens"] > 0, r
print("kiln eval:", lines[0])
PY

# Starts a run paused after step $2, waits (up to 120 s) until it says so; leaves its pid in $pid.
start_paused() {  # run_dir step --set ...
  local run=$1 step=$2; shift 2
  KILN_TEST_PAUSE_AFTER_STEP=$step "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" "$@" \
    >"$run.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do
    grep -q "kiln: test pause after step $step" "$run.log" 2>/dev/null && return 0
    kill -0 $pid 2>/dev/null || { cat "$run.log"; die "the run ended before step $step"; }
    sleep 0.1
  done
  die "no pause after step $step: $(tail -5 "$run.log")"
}

# SIGKILL after step 4's row: checkpoint 3 is the latest, row 4 is redone on resume.
start_paused "$WORK/killed" 4 --set checkpoint.every=1
kill -9 $pid
wait $pid 2>/dev/null || true
[ "$(wc -l <"$WORK/killed/metrics.jsonl")" = 4 ] || die "expected 4 metrics rows at the kill"
[ "$(cat "$WORK/killed/checkpoints/latest")" = step-00000003 ] || die "latest is not step 3"
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/killed" --set checkpoint.every=1 >"$WORK/resumed.log" 2>&1 \
  || { cat "$WORK/resumed.log"; die "resume"; }
grep -q "resumed from .*step-00000003 at step 3" "$WORK/resumed.log" || die "did not resume at step 3"
losses "$WORK/whole" >"$WORK/a"; losses "$WORK/killed" >"$WORK/b"
diff "$WORK/a" "$WORK/b" || die "resumed losses differ from the uninterrupted run"
cmp "$WORK/whole/checkpoints/step-00000008/shard-00000-of-00001.safetensors" "$WORK/killed/checkpoints/step-00000008/shard-00000-of-00001.safetensors" \
  || die "final weights differ"
echo "resume after SIGKILL at step 4: identical losses and weights"

# SIGTERM after step 3 with no periodic checkpoints: step 3 is saved, the run exits 0.
start_paused "$WORK/term" 3 --set checkpoint.every=0
kill -TERM $pid
rc=0; wait $pid || rc=$?
[ $rc = 0 ] || { cat "$WORK/term.log"; die "SIGTERM: exit $rc, expected 0"; }
grep -q "stopping on signal 15 after step 3 (checkpoint saved" "$WORK/term.log" || die "no stop line: $(tail -3 "$WORK/term.log")"
[ "$(ls "$WORK/term/checkpoints" | grep -c '^step-')" = 1 ] && [ "$(cat "$WORK/term/checkpoints/latest")" = step-00000003 ] \
  || die "SIGTERM did not save exactly step 3: $(ls "$WORK/term/checkpoints")"
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/term" >>"$WORK/term.log" 2>&1 || die "resume after SIGTERM"
losses "$WORK/term" >"$WORK/c"
diff "$WORK/a" "$WORK/c" || die "losses after SIGTERM + resume differ"
echo "SIGTERM at step 3: checkpoint saved, exit 0, resumed to identical losses"

# SIGKILL in the middle of step 4's checkpoint save (its shard written, no state.json yet;
# KILN_TEST_FAULT, trainer/test_hooks.h): with keep_last 1, step 2 stays complete and `latest`
# keeps naming it; no step-00000004 exists; the resumed run ends as the uninterrupted one.
rc=0
KILN_TEST_FAULT=kill:shards:4 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/midsave" \
  --set checkpoint.every=2 --set checkpoint.keep_last=1 >"$WORK/midsave.log" 2>&1 || rc=$?
[ $rc = 137 ] || { cat "$WORK/midsave.log"; die "mid-save kill: exit $rc, expected 137"; }
grep -q "kiln: test fault (kill) at shards:4" "$WORK/midsave.log" || die "the fault point was not reached"
[ "$(cat "$WORK/midsave/checkpoints/latest")" = step-00000002 ] || die "latest moved off step 2"
[ ! -e "$WORK/midsave/checkpoints/step-00000004" ] || die "a step-00000004 exists after a killed save"
"$KILN" verify "$WORK/midsave/checkpoints/step-00000002" >/dev/null 2>&1 || die "step 2 does not verify after the killed save"
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/midsave" --set checkpoint.every=2 \
  --set checkpoint.keep_last=1 >>"$WORK/midsave.log" 2>&1 || die "resume after the killed save"
grep -q "resumed from .*step-00000002 at step 2" "$WORK/midsave.log" || die "did not resume at step 2"
losses "$WORK/midsave" >"$WORK/d"
diff "$WORK/a" "$WORK/d" || die "losses after a killed save + resume differ"
cmp "$WORK/whole/checkpoints/step-00000008/shard-00000-of-00001.safetensors" \
  "$WORK/midsave/checkpoints/step-00000008/shard-00000-of-00001.safetensors" || die "final weights differ"
echo "SIGKILL mid-save of step 4: step 2 kept and named by latest, resumed to identical losses and weights"
