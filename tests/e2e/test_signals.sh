#!/usr/bin/env bash
# Signals with steps of several seconds (KILN_TEST_STEP_SLEEP_S, tests only, sleeps inside each
# step), under mpirun -np 2:
#  - SIGUSR1 to mpirun (forwarded to every rank): a complete checkpoint at the end of that step,
#    training goes on, and the losses equal a run without the signal;
#  - SIGTERM to plain mpirun run with --mca odls_base_sigkill_timeout (the kill grace the README
#    tells mpirun users to set): every rank saves a complete checkpoint and ends its run, mpirun
#    exits 1 as the README documents (OpenMPI's status after any SIGTERM), no rank is left, and the
#    resumed run gives exactly the losses of an uninterrupted one;
#  - SIGTERM to kiln-launch (steps of 2 s, the default kill grace of 1 s): the job saves and stops,
#    kiln-launch exits 0 with it, no rank is left running, and the resumed run's losses are exact;
#  - SIGTERM straight to the mpirun that kiln-launch --kill-grace started: the ranks save,
#    kiln-launch exits 0 without restarting, and the resumed run's losses are exact.
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
step=$(sed -n 's/^stopping on signal 15 after step \([0-9]*\) (checkpoint saved.*/\1/p' "$WORK/term.log")
[ -n "$step" ] || { tail -30 "$WORK/term.log"; die "no save on SIGTERM"; }
grep -q "^done: steps 0 -> $step, " "$WORK/term.log" || die "rank 0 did not end its run"
# The README's promise for plain mpirun: exit 1 (OpenMPI's), the checkpoint of that step complete.
[ $rc = 1 ] || die "mpirun exited $rc after SIGTERM; the README documents 1"
latest=$WORK/term/checkpoints/$(cat "$WORK/term/checkpoints/latest")
[ "$(basename "$latest")" = "$(printf 'step-%08d' "$step")" ] || die "latest is $(basename "$latest"), the stop was after step $step"
"$KILN" verify "$latest" >/dev/null 2>&1 || die "$latest does not verify"
no_ranks_left "$WORK/term"
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/term" >>"$WORK/term.log" 2>&1 || die "resume after SIGTERM"
losses "$WORK/term" >"$WORK/term.loss"
diff "$WORK/whole.loss" "$WORK/term.loss" || die "losses after SIGTERM + resume differ"
echo "ok: SIGTERM to mpirun: saved $(basename "$latest"), mpirun exit 1, exact resume"

# The README's job script for exit 0: SIGTERM to the script becomes SIGUSR2 to mpirun.
export KILN_TEST_STEP_SLEEP_S=2
cat >"$WORK/job.sh" <<SH
#!/usr/bin/env bash
mpirun --oversubscribe -np 2 -x KILN_TEST_STEP_SLEEP_S "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/job" & pid=\$!
trap 'kill -USR2 \$pid' TERM INT
while wait \$pid; rc=\$?; kill -0 \$pid 2>/dev/null; do :; done   # a trap ends \`wait\` early
exit \$rc
SH
bash "$WORK/job.sh" >"$WORK/job.log" 2>&1 &
pid=$!
wait_rows "$WORK/job" 1 $pid || { cat "$WORK/job.log"; die "job script ended early"; }
kill -TERM $pid
set +e; wait $pid; rc=$?; set -e
[ $rc = 0 ] || { tail -30 "$WORK/job.log"; die "the README's job script exited $rc after SIGTERM"; }
step=$(sed -n 's/^stopping on signal 12 after step \([0-9]*\) (checkpoint saved.*/\1/p' "$WORK/job.log")
[ -n "$step" ] && [ "$(cat "$WORK/job/checkpoints/latest")" = "$(printf 'step-%08d' "$step")" ] || die "job script: no save"
"$KILN" verify "$WORK/job" >/dev/null 2>&1 || die "job script: checkpoint does not verify"
no_ranks_left "$WORK/job"
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/job" >>"$WORK/job.log" 2>&1 || die "resume after the job script's stop"
losses "$WORK/job" >"$WORK/job.loss"
diff "$WORK/whole.loss" "$WORK/job.loss" || die "losses after the job script's stop + resume differ"
echo "ok: the README's job script: SIGTERM -> saved step $step, exit 0, exact resume"

# SIGTERM to kiln-launch, steps of 2 s and OpenMPI's default kill grace (1 s).
export KILN_TEST_STEP_SLEEP_S=2
KILN_LAUNCH_MPI_ARGS="--oversubscribe -x KILN_TEST_STEP_SLEEP_S" "$ROOT/launch/kiln-launch" -np 2 --restarts 3 --wait 0 \
  --log-dir "$WORK/launch-logs" "$WORK/tiny.yaml" --set train.run_dir="$WORK/launch" >"$WORK/launch.log" 2>&1 &
pid=$!
wait_rows "$WORK/launch" 1 $pid || { cat "$WORK/launch.log"; die "launch run ended early"; }
kill -TERM $pid
set +e; wait $pid; rc=$?; set -e
[ $rc = 0 ] || { tail -30 "$WORK/launch.log"; die "kiln-launch exited $rc after SIGTERM"; }
grep -q "SIGTERM: asking the job to save a checkpoint and stop" "$WORK/launch.log" || die "no forwarding logged"
grep -q "kiln-launch: the job stopped on a signal after saving a checkpoint (signal 12 after step [0-9]*; mpirun exit 0); not restarting" "$WORK/launch.log" || die "kiln-launch restarted or failed"
grep -q "^stopping on signal 12 after step" "$WORK/launch.log" || die "ranks did not stop on the forwarded signal"
[ "$(grep -c "kiln-launch: attempt" "$WORK/launch.log")" = 1 ] || die "more than one attempt"
no_ranks_left "$WORK/launch"
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/launch" >>"$WORK/launch.log" 2>&1 || die "resume after kiln-launch SIGTERM"
losses "$WORK/launch" >"$WORK/launch.loss"
diff "$WORK/whole.loss" "$WORK/launch.loss" || die "losses after kiln-launch SIGTERM + resume differ"
echo "ok: SIGTERM to kiln-launch: saved, exit 0, exact resume"

# SIGTERM straight to kiln-launch's mpirun (as a scheduler or `kill` may send it), --kill-grace 5.
export KILN_TEST_STEP_SLEEP_S=2
KILN_LAUNCH_MPI_ARGS="--oversubscribe -x KILN_TEST_STEP_SLEEP_S" "$ROOT/launch/kiln-launch" -np 2 --restarts 3 --wait 0 \
  --kill-grace 5 --log-dir "$WORK/grace-logs" "$WORK/tiny.yaml" --set train.run_dir="$WORK/grace" >"$WORK/grace.log" 2>&1 &
pid=$!
wait_rows "$WORK/grace" 1 $pid || { cat "$WORK/grace.log"; die "kill-grace run ended early"; }
mpirun_pid=$(pgrep -P $pid -x mpirun) || die "no mpirun under kiln-launch"
kill -TERM "$mpirun_pid"
set +e; wait $pid; rc=$?; set -e
[ $rc = 0 ] || { tail -30 "$WORK/grace.log"; die "kiln-launch exited $rc after SIGTERM to its mpirun"; }
grep -q "kiln-launch: the job stopped on a signal after saving a checkpoint (signal 15 after step [0-9]*; mpirun exit 1); not restarting" \
  "$WORK/grace.log" || { grep kiln-launch: "$WORK/grace.log"; die "kiln-launch did not see the saved stop"; }
[ "$(grep -c "kiln-launch: attempt" "$WORK/grace.log")" = 1 ] || die "kiln-launch restarted a job stopped by SIGTERM"
no_ranks_left "$WORK/grace"
export KILN_TEST_STEP_SLEEP_S=0
run_np2 --set train.run_dir="$WORK/grace" >>"$WORK/grace.log" 2>&1 || die "resume after SIGTERM to kiln-launch's mpirun"
losses "$WORK/grace" >"$WORK/grace.loss"
diff "$WORK/whole.loss" "$WORK/grace.loss" || die "losses after SIGTERM to kiln-launch's mpirun + resume differ"
echo "ok: SIGTERM to kiln-launch's mpirun with --kill-grace 5: saved, kiln-launch exit 0, exact resume"
echo "signals: ok"
