#!/usr/bin/env bash
# A run killed with SIGKILL mid-training and resumed produces exactly the losses and final
# weights of the run that was never interrupted.
source "$(dirname "$0")/lib.sh"
make_tiny
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/whole" >/dev/null 2>&1 || die "uninterrupted run"

"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/killed" --set checkpoint.every=1 \
  --set train.steps=8 >"$WORK/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do  # until step 4 is logged (checkpoint 4 may or may not be complete)
  [ -f "$WORK/killed/metrics.jsonl" ] && [ "$(wc -l <"$WORK/killed/metrics.jsonl")" -ge 4 ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
kill -9 $pid 2>/dev/null || die "the run ended before it could be killed"
wait $pid 2>/dev/null || true
echo "killed after $(wc -l <"$WORK/killed/metrics.jsonl") logged steps; latest: $(cat "$WORK/killed/checkpoints/latest")"
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/killed" --set checkpoint.every=1 >"$WORK/resumed.log" 2>&1 \
  || { cat "$WORK/resumed.log"; die "resume"; }
grep -q "resumed from" "$WORK/resumed.log" || die "did not resume"
losses "$WORK/whole" >"$WORK/a"; losses "$WORK/killed" >"$WORK/b"
diff "$WORK/a" "$WORK/b" || die "resumed losses differ from the uninterrupted run"
cmp "$WORK/whole/checkpoints/step-00000008/model.safetensors" "$WORK/killed/checkpoints/step-00000008/model.safetensors" \
  || die "final weights differ"
echo "resume after SIGKILL: identical losses and weights"
