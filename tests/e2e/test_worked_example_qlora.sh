#!/usr/bin/env bash
# The README's QLoRA example with its own config file (configs/examples/tiny-qlora.yaml) on a slice
# of the example corpus: `kiln plan` shows the QLoRA memory lines (packed NF4 base, its scales,
# the adapters), and QLoRA SFT from the tiny pretrained checkpoint lowers the loss; its adapter
# exports in PEFT's format.
source "$(dirname "$0")/lib.sh"
example_workspace qlora
"$KILN" plan configs/examples/tiny-qlora.yaml >plan.log 2>&1 || { cat plan.log; die "plan"; }
grep -qE '^lora: +rank 8, .* adapter parameters .*QLoRA' plan.log || { cat plan.log; die "plan shows no adapters"; }
grep -qE '^base: +[0-9.]+ KiB packed NF4 \(786.43 K parameters\) \| scales [0-9.]+ KiB \|' plan.log \
  || { grep -E '^(lora|base|memory)' plan.log; die "plan shows no packed base"; }
"$KILN" train configs/examples/tiny-qlora.yaml --set train.steps=12 --set train.log_every=1 "${short[@]}" \
  >qlora.log 2>&1 || { cat qlora.log; die "qlora"; }
grep -q "qlora: 28 base projections quantized to NF4 (double quant)" qlora.log || die "no NF4 base"
losses runs/tiny-qlora >qlora.loss
python3 - qlora.loss <<'PY' || die "QLoRA SFT did not lower the loss"
import sys
l = [float(x) for x in open(sys.argv[1])]
first, last = sum(l[:3]) / 3, sum(l[-3:]) / 3
assert len(l) == 12 and last < first - 0.05, l
print(f"QLoRA SFT: loss {first:.3f} -> {last:.3f} over {len(l)} steps")
PY
"$KILN" export runs/tiny-qlora --format peft --out adapter >export.log 2>&1 || { cat export.log; die "export"; }
[ -f adapter/adapter_config.json ] && [ -f adapter/adapter_model.safetensors ] || die "no PEFT files"
grep -E '^(lora|base|memory)' plan.log
echo "worked example: QLoRA plan and SFT from the pretrained checkpoint, adapter exported"
