#!/usr/bin/env bash
# The README's worked example, pretraining then SFT, with its own config files and paths
# (tiny-sft.yaml's model.init_from: ckpt:../../runs/tiny-pretrain is resolved against the config
# file, run_dir against the working directory) on a slice of the example corpus: the SFT run's
# step-0 weights are exactly the pretraining checkpoint's (both exported, byte for byte), and
# it trains on from there.
source "$(dirname "$0")/lib.sh"
example_workspace sft
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
