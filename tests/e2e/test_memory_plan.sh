#!/usr/bin/env bash
# `kiln plan`'s per-rank peak (trainer/memory_plan.h) is within 20% of what a one-step `kiln train`
# of the same config peaks at (its "peak memory per rank (MiB, resident)" line), on two cases
# where different terms dominate: packed SFT rows at seq 4096 (the attention mask and its float
# copy per layer: about a third of the peak) and dense rows at micro-batch 4 x 1024 (the saved
# activations). The runtime's own resident size (~350 MiB of LibTorch) is a large part of both.
# bench/plan.sh runs the full set of layouts.
source "$(dirname "$0")/lib.sh"
python3 "$ROOT/bench/synthetic_corpus.py" "$WORK" --vocab 3000 --tokenizer-lines 2000 --dense 8 3000 --sft 600
"$KILN" tokenizer train --input "$WORK/tokenizer.txt" --out "$WORK/tok" --vocab-size 2000 >/dev/null 2>&1 || die "tokenizer"
cat >"$WORK/plan.yaml" <<YAML
model: {vocab_size: 2000, hidden_size: 128, num_layers: 4, num_heads: 4, num_kv_heads: 2, max_seq_len: 4096}
tokenizer: tok.model
data: {mixture: dense.jsonl, format: text, packing: false, overlong: truncate, seq_len: 1024}
train: {run_dir: $WORK/run, steps: 1, micro_batch_size: 4, lr: 1.0e-4, warmup_steps: 0, precision: fp32,
        tensorboard: none}
checkpoint: {every: 0, keep_last: 1}
YAML
check() {  # name, --set arguments...
  local name=$1
  shift
  (cd "$WORK" && "$KILN" plan plan.yaml "$@") >"$WORK/$name.plan" 2>&1 || { cat "$WORK/$name.plan"; die "$name: plan"; }
  rm -rf "$WORK/run"
  (cd "$WORK" && "$KILN" train plan.yaml "$@") >"$WORK/$name.train" 2>&1 || { tail -5 "$WORK/$name.train"; die "$name: train"; }
  local est measured
  est=$(sed -n 's/^peak resident: *\([0-9]*\) MiB per rank/\1/p' "$WORK/$name.plan")
  measured=$(sed -n 's/.*peak memory per rank (MiB, resident): *\([0-9]*\).*/\1/p' "$WORK/$name.train")
  [ -n "$est" ] && [ -n "$measured" ] || die "$name: no estimate ($est) or no measured peak ($measured)"
  python3 -c "import sys; e, m = int(sys.argv[1]), int(sys.argv[2]); r = e / m
print(f'$name: plan {e} MiB, measured {m} MiB, ratio {r:.3f}'); sys.exit(0 if 0.8 <= r <= 1.2 else 1)" \
    "$est" "$measured" || { grep -A4 '^peak terms' "$WORK/$name.plan"; die "$name: the plan is off by more than 20%"; }
}
check packed-4096 --set data.mixture=sft.jsonl --set data.format=firefly --set data.packing=true \
  --set data.seq_len=4096 --set train.micro_batch_size=1
check dense-4x1024
echo "memory plan: within 20% of the measured peak on packed and dense rows"
