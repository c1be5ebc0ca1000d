#!/usr/bin/env bash
# Signals with steps of several seconds (KILN_TEST_STEP_SLEEP_S, tests only, sleeps inside each
# step), under mpirun -np 2:
#  - SIGUSR1 to mpirun (forwarded to every rank): a complete checkpoint at the end of that step,
#    training goes on, and the losses equal a run without the signal;
#  - SIGTERM to plain mpirun run with --mca odls_base_sigkill_timeout (the kill grace the README
#    tells mpirun users to set): every rank saves a complete checkpoint and ends its run; the
#    resumed run gives exactly the losses of an uninterrupted one;
#  - SIGTERM to kiln-launch: the job saves and stops, kiln-launch exits 0 with it, no rank is left
#    running, and the resumed run's losses are exact.
source "$(dirname "$0")/lib.sh"
make_tiny
run_np2() { timeout 300 mpirun --oversubscribe -np 2 -x KILN_TEST_STEP_SLEEP_S "$KILN" train "$WORK/tiny.yaml" "$@"; }
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/whole" >"$WORK/whole.log" 2>&1 || { tail "$WORK/whole.log"; die "reference run"; }
losses "$WORK/whole" >"$WORK/whole.loss"

wait_rows() {  # run_dir rows pid
  for _ in $(seq 1 1200); do
    [ -f "$1/metrics.jsonl" ] && [ "$(wc -l <"$1/metrics.jsonl")" -ge "$2" ] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
no_ranks_left() {  # run_dir: no kiln process of this run is still running
  ! pgrep -f -- "train.run_dir=$1" >/dev/null || die "ranks of $1 are still running: $(pgrep -af -- "train.run_dir=$1")"
}

# SIGUSR1: save and go on.
export KILN_TEST_STEP_SLEEP_S=0.5
mpirun --oversubscribe -np 2 -x KILN_TEST_STEP_SLEEP_S "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/usr1" \
  --set checkpoint.keep_last=10 >"$WORK/usr1.log" 2>&1 &
pid=$!
wait_rows "$WORK/usr1" 2 $pid || die "usr1 run ended early"
kill -USR1 $pid
wait $pid || { tail "$WORK/usr1.log"; die "run with SIGUSR1 failed"; }
step=$(sed -n 's/^checkpoint on signal 10 (SIGUSR1) after step \([0-9]*\); training goes on$/\1/p' "$WORK/usr1.log")
[ -n "$step" ] && [ "$step" -lt 8 ] || die "no SIGUSR1 checkpoint mid-run: $(grep -i signal "$WORK/usr1.log")"
ckpt=$(printf '%s/usr1/checkpoints/step-%08d' "$WORK" "$step")
"$KILN" verify "$ckpt" >/dev/null 2>&1 || die "$ckpt is not complete"
losses "$WORK/usr1" >"$WORK/usr1.loss"
diff "$WORK/whole.loss" "$WORK/usr1.loss" || die "SIGUSR1 changed the losses"
echo "ok: SIGUSR1 at step $step: checkpoint $ckpt, training went on, same losses"

# SIGTERM to mpirun, steps of 2 s (twice the default kill grace), kill grace 5 s (above a step plus a save).
export KILN_TEST_STEP_SLEEP_S=2
mpirun --oversubscribe --mca odls_base_sigkill_timeout 5 -np 2 -x KILN_TEST_STEP_SLEEP_S "$KILN" train \
  "$WORK/tiny.yaml" --set train.run_dir="$WORK/term" >"$WORK/term.log" 2>&1 &
pid=$!
wait_rows "$WORK/term" 1 $pid || die "term run ended early"
kill -TERM $pid
set +e; wait $pid; rc=$?; set -e
echo "mpirun after SIGTERM: exit $rc (OpenMPI reports a job it was told to terminate as failed)"
grep -q "^stopping on signal 15 after step [0-9]* (checkpoint saved" "$WORK/term.log" || { tail -30 "$WORK/term.log"; die "no save on SIGTERM"; }
grep -q "^done: steps 0 -> " "$WORK/term.log" || die "rank 0 did not end its run"
latest=$WORK/term/checkpoints/$(cat "$WORK/term/checkpoints/latest")
[ -f "$latest/state.json" ] || die "latest is not complete"
no_ranks_left "$WORK/term"
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/term" >>"$WORK/term.log" 2>&1 || die "resume after SIGTERM"
losses "$WORK/term" >"$WORK/term.loss"
diff "$WORK/whole.loss" "$WORK/term.loss" || die "losses after SIGTERM + resume differ"
echo "ok: SIGTERM to mpirun: saved $(basename "$latest"), exact resume"

# SIGTERM to kiln-launch.
export KILN_TEST_STEP_SLEEP_S=0.5
KILN_LAUNCH_MPI_ARGS="--oversubscribe -x KILN_TEST_STEP_SLEEP_S" "$ROOT/launch/kiln-launch" -np 2 --restarts 3 --wait 0 \
  --log-dir "$WORK/launch-logs" "$WORK/tiny.yaml" --set train.run_dir="$WORK/launch" >"$WORK/launch.log" 2>&1 &
pid=$!
wait_rows "$WORK/launch" 2 $pid || { cat "$WORK/launch.log"; die "launch run ended early"; }
kill -TERM $pid
set +e; wait $pid; rc=$?; set -e
[ $rc = 0 ] || { tail -30 "$WORK/launch.log"; die "kiln-launch exited $rc after SIGTERM"; }
grep -q "SIGTERM: asking the job to save a checkpoint and stop" "$WORK/launch.log" || die "no forwarding logged"
grep -q "the job stopped on request (exit 0); not restarting" "$WORK/launch.log" || die "kiln-launch restarted or failed"
grep -q "^stopping on signal 12 after step" "$WORK/launch.log" || die "ranks did not stop on the forwarded signal"
[ "$(grep -c "kiln-launch: attempt" "$WORK/launch.log")" = 1 ] || die "more than one attempt"
no_ranks_left "$WORK/launch"
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/launch" >>"$WORK/launch.log" 2>&1 || die "resume after kiln-launch SIGTERM"
losses "$WORK/launch" >"$WORK/launch.loss"
diff "$WORK/whole.loss" "$WORK/launch.loss" || die "losses after kiln-launch SIGTERM + resume differ"
echo "signals: ok"
