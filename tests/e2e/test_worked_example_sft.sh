#!/usr/bin/env bash
# The README's worked example, pretraining then SFT, with its own config files and paths
# (tiny-sft.yaml's model.init_from: ckpt:../../runs/tiny-pretrain is resolved against the config
# file, run_dir against the working directory) on a slice of the example corpus: the SFT run's
# step-0 weights are exactly the pretraining checkpoint's (both exported, byte for byte), and
# it trains on from there.
source "$(dirname "$0")/lib.sh"
corpus=$ROOT/configs/examples/corpus
if [ ! -f "$corpus/tokenizer.model" ]; then
  echo "no example corpus ($corpus/tokenizer.model; scripts/setup.sh makes it)"
  exit 77
fi
mkdir -p "$WORK/configs/examples/corpus"
cp "$ROOT"/configs/examples/tiny-{pretrain,sft}.yaml "$WORK/configs/examples/"
cp "$corpus"/{tokenizer.model,data.json} "$WORK/configs/examples/corpus/"
for f in en zh sft eval; do head -n 120 "$corpus/$f.jsonl" >"$WORK/configs/examples/corpus/$f.jsonl"; done
cd "$WORK"
short=(--set train.warmup_steps=1 --set data.seq_len=64 --set train.micro_batch_size=2 --set train.global_batch_size=4)
"$KILN" train configs/examples/tiny-pretrain.yaml --set train.steps=2 "${short[@]}" >pre.log 2>&1 \
  || { cat pre.log; die "pretrain"; }
[ "$(cat runs/tiny-pretrain/checkpoints/latest)" = step-00000002 ] || die "pretrain did not save step 2"
"$KILN" train configs/examples/tiny-sft.yaml --set train.steps=0 "${short[@]}" >sft0.log 2>&1 \
  || { cat sft0.log; die "sft (steps 0)"; }
grep -q "weights: ckpt:.*runs/tiny-pretrain" sft0.log || die "sft did not start from the pretrain run: $(grep weights sft0.log)"
"$KILN" export runs/tiny-pretrain/checkpoints/step-00000002 --out pre-hf >export.log 2>&1 || { cat export.log; die "export pretrain"; }
"$KILN" export runs/tiny-sft/checkpoints/step-00000000 --out sft0-hf >/dev/null 2>&1 || die "export sft step 0"
cmp pre-hf/model.safetensors sft0-hf/model.safetensors || die "the SFT's step-0 weights are not the pretrain checkpoint's"
"$KILN" train configs/examples/tiny-sft.yaml --set train.steps=2 --set train.run_dir=runs/tiny-sft-2 "${short[@]}" \
  >sft.log 2>&1 || { cat sft.log; die "sft"; }
[ "$(losses runs/tiny-sft-2 | wc -l)" = 2 ] || die "sft did not train 2 steps"
echo "worked example: SFT step 0 equals the pretrain checkpoint, and it trains on"
