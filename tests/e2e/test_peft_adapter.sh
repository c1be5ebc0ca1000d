#!/usr/bin/env bash
# A kiln-written PEFT adapter (models/peft.h; written by the unit test Peft.WritesPeftsNamesShapesAndConfig
# into KILN_PEFT_OUT) loads with PeftModel.from_pretrained onto the HF fixture base with every tensor
# taken from the file (none missing, none left at PEFT's init), the config's r, alpha, DoRA and
# targets, and PEFT's output of every adapted module equals kiln's (1e-5). Needs the test python
# (build/python_path) with peft.
source "$(dirname "$0")/lib.sh"
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -c "import peft, transformers" 2>/dev/null; then
  echo "no python with peft + transformers (build/python_path): cannot check the adapter" >&2
  exit 1
fi
KILN_PEFT_OUT="$WORK/adapter" "$ROOT/build/kiln_tests" --gtest_filter='Peft.WritesPeftsNamesShapesAndConfig' \
  >"$WORK/unit.log" 2>&1 || { cat "$WORK/unit.log" >&2; die "writing the adapter"; }
"$py" - "$ROOT/tests/fixtures/hf/llama_linear" "$WORK/adapter" <<'PY' || die "PEFT could not load kiln's adapter or computes other outputs"
import sys, warnings
import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
base_dir, adapter = sys.argv[1:3]
base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = PeftModel.from_pretrained(base, adapter).eval()
bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
assert not bad, bad
cfg = model.peft_config["default"]
assert (cfg.r, cfg.lora_alpha, cfg.use_dora, cfg.use_rslora) == (4, 8, True, False), cfg
assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
file = load_file(f"{adapter}/adapter_model.safetensors")
expected = load_file(f"{adapter}/kiln_expected.safetensors")
state = model.state_dict()
n = 0
for name, module in model.named_modules():
    if not isinstance(module, LoraLinear):
        continue
    hf = name[len("base_model.model."):]
    for key, param in [("lora_A.weight", module.lora_A["default"].weight),
                       ("lora_B.weight", module.lora_B["default"].weight),
                       ("lora_magnitude_vector", module.lora_magnitude_vector["default"].weight)]:
        assert torch.equal(param, file[f"base_model.model.{hf}.{key}"]), (hf, key)
    with torch.no_grad():
        y = module(expected[f"{hf}.x"])
    want = expected[f"{hf}.y"]
    rel = ((y - want).norm() / want.norm()).item()
    assert rel <= 1e-5, (hf, rel)
    n += 1
assert n == 21, n
with torch.no_grad():
    model(torch.tensor([[1, 2, 3, 4]]))  # the whole adapted model runs
print(f"PEFT loaded kiln's adapter: {n} modules, outputs equal kiln's")
PY
echo "kiln adapter -> PeftModel.from_pretrained: names, shapes, config and outputs agree"
