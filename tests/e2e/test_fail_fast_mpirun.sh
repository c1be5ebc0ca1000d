#!/usr/bin/env bash
# Bad input under mpirun ends the whole job with exit 2 within seconds on every rank, never
# after parallel.timeout_s (600 s by default), and kiln-launch does not retry it:
#  - run_dir is a file: found at start by rank 0, before any step, and shared with every rank;
#  - an error only rank 0 hits mid-run (MPMD: rank 0's data.eval is missing; its eval at step 2
#    fails while rank 1 waits in the eval's collective).
source "$(dirname "$0")/lib.sh"
make_tiny
expect_fast_exit2() {  # name want log command...
  local name=$1 want=$2 log=$3; shift 3
  local start rc took
  start=$(date +%s)
  set +e; timeout 120 "$@" >"$log" 2>&1; rc=$?; set -e
  took=$(($(date +%s) - start))
  [ "$rc" = 2 ] || { tail -20 "$log"; die "$name: exit $rc after ${took}s, expected 2"; }
  [ "$took" -le 30 ] || die "$name: took ${took}s"
  grep -qF -- "$want" "$log" || { tail -20 "$log"; die "$name: no '$want'"; }
  echo "ok: $name: exit 2 in ${took}s: $(grep -F -- "$want" "$log" | head -1)"
}
echo x >"$WORK/afile"
expect_fast_exit2 "run_dir a file, np 2" "kiln train: error: train.run_dir: $WORK/afile is a file, not a directory" \
  "$WORK/file.log" mpirun --oversubscribe -np 2 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/afile"
grep -q "world rank 0 refused to start" "$WORK/file.log" || die "rank 1 does not say why it stopped"
! grep -q "^step 1/" "$WORK/file.log" || die "steps were trained before the error"

mpmd=(mpirun --oversubscribe
  -np 1 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/mpmd" --set train.eval_every=2
  --set data.eval="$WORK/missing.jsonl" :
  -np 1 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/mpmd" --set train.eval_every=2)
expect_fast_exit2 "rank-0-only error mid-run" "kiln train: error: data.mixture: $WORK/missing.jsonl: file not found" "$WORK/mpmd.log" "${mpmd[@]}"
grep -q "^step 2/" "$WORK/mpmd.log" || die "the error was not mid-run"

# kiln-launch sees the job's exit 2 as bad input and does not retry it.
cat >"$WORK/mpmd-mpirun" <<SH
#!/usr/bin/env bash
exec $(printf '%q ' "${mpmd[@]}")
SH
chmod +x "$WORK/mpmd-mpirun"
rm -rf "$WORK/mpmd"
set +e
MPIRUN="$WORK/mpmd-mpirun" timeout 120 "$ROOT/launch/kiln-launch" --log-dir "$WORK/launch-logs" --restarts 3 --wait 0 "$WORK/tiny.yaml" >"$WORK/launch.log" 2>&1
rc=$?
set -e
[ $rc = 2 ] || { tail "$WORK/launch.log"; die "kiln-launch exited $rc"; }
[ "$(grep -c "kiln-launch: attempt" "$WORK/launch.log")" = 1 ] || die "kiln-launch retried bad input"
grep -q "bad input (exit 2); not restarting" "$WORK/launch.log" || die "kiln-launch did not say why"
echo "fail fast under mpirun: ok"
