#!/usr/bin/env bash
# kiln-launch: a job that dies mid-run is restarted and resumes to the same losses as a run that
# never failed; bad input is not retried; a malformed hostfile is named.
source "$(dirname "$0")/lib.sh"
make_tiny
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/whole" >/dev/null 2>&1 || die "reference run"

# An "mpirun" whose first launch is killed (SIGKILL) after step 3, like a node dying: the run is
# held there by KILN_TEST_PAUSE_AFTER_STEP (trainer/test_hooks.h), so the kill lands at step 3.
cat >"$WORK/flaky-mpirun" <<SH
#!/usr/bin/env bash
shift 2                                   # -np N
while [ "\${1:-}" != "$KILN" ]; do shift; done
if [ ! -f "$WORK/failed-once" ]; then
  touch "$WORK/failed-once"
  KILN_TEST_PAUSE_AFTER_STEP=3 "\$@" 2>"$WORK/first.err" & pid=\$!
  until grep -q "kiln: test pause after step 3" "$WORK/first.err"; do kill -0 \$pid 2>/dev/null || exit 1; sleep 0.1; done
  kill -9 \$pid; wait \$pid; exit 137
fi
exec "\$@"
SH
chmod +x "$WORK/flaky-mpirun"
MPIRUN="$WORK/flaky-mpirun" "$ROOT/launch/kiln-launch" --log-dir "$(mktemp -d "$WORK/launch-logs.XXXXXX")" --restarts 2 --wait 0 "$WORK/tiny.yaml" \
  --set train.run_dir="$WORK/run" --set checkpoint.every=1 >"$WORK/launch.log" 2>&1 || { cat "$WORK/launch.log"; die "launch"; }
grep -q "attempt 1 failed: exit 137 (128 + signal 9); restarting" "$WORK/launch.log" || die "no restart: $(cat "$WORK/launch.log")"
losses "$WORK/whole" >"$WORK/a"; losses "$WORK/run" >"$WORK/b"
diff "$WORK/a" "$WORK/b" || die "restarted run's losses differ"
grep -q "resumed from .*step-00000002 at step 2" "$WORK/launch.log" || die "the restart did not resume at step 2"

# A rank that hangs in the first attempt (held after step 2 by KILN_TEST_PAUSE_AFTER_STEP): the
# other gives up after parallel.timeout_s, kiln-launch logs the collective timeout as the cause, and
# the second attempt resumes from step 1 to the losses of a 2-process run that never failed.
mpirun --oversubscribe -np 2 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/whole2" >/dev/null 2>&1 \
  || die "2-process reference run"
cat >"$WORK/hang-mpirun" <<SH
#!/usr/bin/env bash
if [ ! -f "$WORK/hung-once" ]; then
  touch "$WORK/hung-once"
  exec mpirun --oversubscribe -np 1 env KILN_TEST_PAUSE_AFTER_STEP=2 "$KILN" train "$WORK/tiny.yaml" \
    --set train.run_dir="$WORK/hang" --set checkpoint.every=1 --set parallel.timeout_s=3 : \
    -np 1 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/hang" --set checkpoint.every=1 --set parallel.timeout_s=3
fi
exec mpirun --oversubscribe "\$@"
SH
chmod +x "$WORK/hang-mpirun"
MPIRUN="$WORK/hang-mpirun" timeout 300 "$ROOT/launch/kiln-launch" --log-dir "$WORK/hang-logs" -np 2 --restarts 1 --wait 0 "$WORK/tiny.yaml" \
  --set train.run_dir="$WORK/hang" --set checkpoint.every=1 --set parallel.timeout_s=3 >"$WORK/hang.log" 2>&1 \
  || { tail -30 "$WORK/hang.log"; die "launch after a hung rank"; }
grep -q "kiln-launch: attempt 1 failed: exit [0-9]*.*, collective timeout (timeout after 3s in [a-z_]*.*; restarting" "$WORK/hang.log" \
  || { grep kiln-launch: "$WORK/hang.log"; die "the collective timeout is not logged as the cause"; }
grep -q "resumed from .*step-00000001 at step 1" "$WORK/hang.log" || die "the restart did not resume at step 1"
losses "$WORK/whole2" >"$WORK/a2"; losses "$WORK/hang" >"$WORK/b2"
diff "$WORK/a2" "$WORK/b2" || die "losses after a hung rank and a restart differ"
echo "ok: $(grep -o 'attempt 1 failed: .*' "$WORK/hang.log")"

# Bad input is not retried.
set +e
MPIRUN="$WORK/flaky-mpirun" "$ROOT/launch/kiln-launch" --log-dir "$(mktemp -d "$WORK/launch-logs.XXXXXX")" --restarts 5 --wait 0 "$WORK/tiny.yaml" --set train.stepz=1 >"$WORK/bad.log" 2>&1
rc=$?
set -e
[ $rc = 2 ] && [ "$(grep -c "attempt" "$WORK/bad.log")" = 1 ] || die "bad input was retried or rc $rc: $(cat "$WORK/bad.log")"
printf 'node1 slots=8\nnode2 cpus=4\n' >"$WORK/hosts"
set +e; out=$("$ROOT/launch/kiln-launch" --log-dir "$(mktemp -d "$WORK/launch-logs.XXXXXX")" --hostfile "$WORK/hosts" "$WORK/tiny.yaml" 2>&1); rc=$?; set -e
[ $rc = 2 ] && echo "$out" | grep -q 'hosts:2: bad field "cpus=4"' || die "hostfile error: $out"
echo "kiln-launch: restart, no retry on bad input, hostfile errors: ok"
