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
