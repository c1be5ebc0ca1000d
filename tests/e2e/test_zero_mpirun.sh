#!/usr/bin/env bash
# `mpirun -np N kiln train` with ZeRO 0-3 gives the losses of the one-process run with the
# same global batch (fp32, 1e-5 relative), and a run saved at dp=2 resumes at dp=1.
# The data mixes pretraining text (every label trained) with SFT samples whose long prompts are
# masked, so ranks and micro-batches train very different numbers of tokens: a loss divided by
# a rank's own trained tokens (or the mean of the ranks' means) does not match the dp=1 run.
source "$(dirname "$0")/lib.sh"
make_tiny
python3 - "$WORK/long_prompts.jsonl" <<'PY'
import json, random, sys
random.seed(5)
words = "the quick brown fox jumps over lazy dog sea moon hill light town poem journey".split()
with open(sys.argv[1], "w") as f:
    for i in range(24):
        q = " ".join(random.choice(words) for _ in range(random.randint(4, 30)))
        a = " ".join(random.choice(words) for _ in range(random.randint(1, 3)))
        f.write(json.dumps({"conversation": [{"human": q, "assistant": a}]}) + "\n")
PY
printf '{"pretrain.jsonl": 1.0, "sft_firefly.jsonl": 1.0, "long_prompts.jsonl": 2.0}\n' >"$WORK/data.json"
# np 2 with untied embeddings, np 4 with tied ones (the head then shares the embedding's shard).
for tied in false true; do
  "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/dp1-$tied" --set model.tie_embeddings=$tied \
    >/dev/null 2>&1 || die "dp=1 run"
  losses "$WORK/dp1-$tied" >"$WORK/dp1-$tied.loss"
done
cp "$WORK/dp1-false.loss" "$WORK/dp1.loss"
for np in 2 4; do
  tied=$([ $np = 4 ] && echo true || echo false)
  for zero in 0 1 2 3; do
    run=$WORK/np$np-z$zero
    timeout 300 mpirun --oversubscribe -np $np "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" \
      --set parallel.zero=$zero --set model.tie_embeddings=$tied \
      --set train.micro_batch_size=$((8 / np / 2 > 0 ? 8 / np / 2 : 1)) >"$run.log" 2>&1 \
      || { tail -20 "$run.log"; die "np $np zero $zero"; }
    losses "$run" >"$run.loss"
    echo -n "np $np zero $zero tied $tied: "; close "$WORK/dp1-$tied.loss" "$run.loss" 1e-5 || die "np $np zero $zero differs"
  done
done
# Saved at dp=2 (ZeRO-2), resumed in one process: the remaining steps match too.
run=$WORK/reshard
timeout 300 mpirun --oversubscribe -np 2 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" \
  --set parallel.zero=2 --exit-after 4 >"$run.log" 2>&1 || { tail -20 "$run.log"; die "dp=2 first half"; }
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" >>"$run.log" 2>&1 || { tail -20 "$run.log"; die "dp=1 second half"; }
losses "$run" >"$run.loss"
echo -n "dp=2 -> dp=1 resume: "; close "$WORK/dp1.loss" "$run.loss" 1e-5 || die "resharded resume differs"

# A rank that stops answering during `kiln train` (held after step 2 by KILN_TEST_PAUSE_AFTER_STEP,
# trainer/test_hooks.h) makes the others give up after parallel.timeout_s with the timeout line,
# and the job exits non-zero instead of hanging.
run=$WORK/stuck
start=$(date +%s)
set +e
timeout 120 mpirun --oversubscribe -np 1 env KILN_TEST_PAUSE_AFTER_STEP=2 "$KILN" train "$WORK/tiny.yaml" \
  --set train.run_dir="$run" --set parallel.timeout_s=3 --set train.micro_batch_size=2 \
  : -np 1 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" --set parallel.timeout_s=3 \
  --set train.micro_batch_size=2 >"$run.log" 2>&1
rc=$?
set -e
took=$(($(date +%s) - start))
[ $rc != 0 ] && [ $rc != 124 ] || { tail -20 "$run.log"; die "stuck rank: rc $rc (124: the job hung)"; }
grep -q "kiln: test pause after step 2" "$run.log" || die "rank 0 never paused: $(tail -5 "$run.log")"
grep -q "kiln: timeout after 3s in all_reduce" "$run.log" || { tail -20 "$run.log"; die "no timeout line"; }
echo "stuck rank during kiln train: job ended (rc $rc) after ${took}s with the timeout line"
