#!/usr/bin/env bash
# LoRA and QLoRA through the CLI (trainer/lora_setup.h), on the tiny model with a base exported
# from a seeded run (hf:DIR, so PEFT and transformers can load the same base):
#   - LoRA (with dropout) and QLoRA (NF4 base, double quant, with dropout) under ZeRO-3 with dp=2
#     give the dp=1 losses (1e-5), LoRA under ZeRO 0-2 and with train.optimizer_offload: cpu too;
#     under ZeRO-3 each rank keeps about half the packed NF4 base;
#   - a LoRA checkpoint holds only adapter master weights and AdamW moments: no base tensor,
#     and its size is the adapters' (3 x 4 bytes per adapter element plus headers), not the model's;
#   - a QLoRA run with dropout stopped after 3 steps and resumed equals the uninterrupted run bit
#     for bit (losses as written, and the adapters of the last checkpoint);
#   - `kiln export --format peft` loads with PeftModel.from_pretrained onto the base and gives
#     kiln's logits (1e-4); `--format hf` equals PEFT's merge_and_unload of it (DoRA + rsLoRA), and
#     a QLoRA run's --format hf (dequantized, merged) gives kiln's QLoRA logits;
#   - lora.init_from: peft:DIR continues from the exported adapter (its step-0 adapters equal it);
#   - LoRA and DoRA under tensor parallel (tp 2, sequence parallel, tp 2 x dp 2 ZeRO-3) give the
#     dp=1 losses and adapters; a tp 2 checkpoint resumes at tp 1; init_from peft: at tp 2.
source "$(dirname "$0")/lib.sh"
make_tiny
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -c "import peft, transformers" 2>/dev/null; then
  echo "no python with peft + transformers (build/python_path)" >&2
  exit 1
fi
LOGITS=$ROOT/build/kiln_test_logits
cd "$WORK"
"$KILN" train tiny.yaml --set train.steps=0 --set train.run_dir="$WORK/base-run" >base.log 2>&1 || { cat base.log; die "base"; }
"$KILN" export base-run --out base-hf >>base.log 2>&1 || { cat base.log; die "base export"; }
lora=(--set model.init_from=hf:"$WORK/base-hf" --set lora.rank=4 --set lora.alpha=8 --set lora.dropout=0.1
      --set train.steps=6 --set train.weight_decay=0.01)
qlora=("${lora[@]}" --set lora.quantize_base=nf4)

run() {  # name np args...
  local name=$1 np=$2; shift 2
  if [ "$np" = 1 ]; then
    "$KILN" train tiny.yaml --set train.run_dir="$WORK/$name" "$@" >"$name.log" 2>&1 || { tail -20 "$name.log"; die "$name"; }
  else
    timeout 300 mpirun --oversubscribe -np "$np" "$KILN" train tiny.yaml --set train.run_dir="$WORK/$name" "$@" \
      >"$name.log" 2>&1 || { tail -20 "$name.log"; die "$name"; }
  fi
  losses "$WORK/$name" >"$name.loss"
}

# --- dp=2 equals dp=1 ---------------------------------------------------------------------------
run lora-dp1 1 "${lora[@]}"
run lora-z3 2 "${lora[@]}" --set parallel.zero=3
echo -n "LoRA ZeRO-3 dp=2: "; close lora-dp1.loss lora-z3.loss 1e-5 || die "LoRA ZeRO-3 dp=2 differs from dp=1"
for zero in 0 1 2; do
  run lora-z$zero 2 "${lora[@]}" --set parallel.zero=$zero
  echo -n "LoRA ZeRO-$zero dp=2: "; close lora-dp1.loss lora-z$zero.loss 1e-5 || die "LoRA ZeRO-$zero dp=2 differs from dp=1"
done
run lora-offload 1 "${lora[@]}" --set train.optimizer_offload=cpu
echo -n "LoRA optimizer_offload cpu: "; close lora-dp1.loss lora-offload.loss 1e-5 || die "offload differs"
run qlora-dp1 1 "${qlora[@]}"
run qlora-z3 2 "${qlora[@]}" --set parallel.zero=3
echo -n "QLoRA ZeRO-3 dp=2: "; close qlora-dp1.loss qlora-z3.loss 1e-5 || die "QLoRA ZeRO-3 dp=2 differs from dp=1"
grep -q "qlora: 14 base projections quantized to NF4 (double quant)" qlora-dp1.log || die "no NF4 base: $(grep qlora qlora-dp1.log)"
# Under ZeRO-3 each rank keeps half the packed base (and gathers each projection for its use).
line=$(grep -m1 "qlora: ZeRO-3 shards the NF4 base over dp 2" qlora-z3.log) || die "QLoRA ZeRO-3 did not shard the NF4 base"
python3 -c 'import re,sys; k,t=map(int,re.search(r"(\d+) of (\d+) bytes",sys.argv[1]).groups()); assert t/2 <= k < 0.55*t, (k,t)' "$line" \
  || die "the sharded NF4 base is not half per rank: $line"
if cmp -s lora-dp1.loss qlora-dp1.loss; then die "QLoRA's losses are LoRA's: the base was not quantized"; fi

# --- a LoRA checkpoint holds adapters and their optimizer state only ----------------------------
"$py" - lora-dp1/checkpoints/step-00000006 base-run/checkpoints/step-00000000 base-hf/config.json <<'PY' || die "the LoRA checkpoint holds more than the adapters"
import glob, json, os, struct, sys
def shards(d):
    names, elems, size = [], 0, 0
    for f in glob.glob(f"{d}/shard-*.safetensors"):
        n = struct.unpack("<Q", open(f, "rb").read(8))[0]
        header = json.loads(open(f, "rb").read(8 + n)[8:])
        for k, v in header.items():
            if k == "__metadata__": continue
            names.append(k.split("#")[0])  # "master/NAME#0": a slice of NAME
            e = 1
            for s in v["shape"]: e *= s
            elems += e
        size += os.path.getsize(f)
    return names, elems, size
names, elems, size = shards(sys.argv[1])
_, _, full = shards(sys.argv[2])
kinds = {k.split("/")[0] for k in names}
assert kinds == {"master", "exp_avg", "exp_avg_sq"}, kinds
assert all(k.endswith((".lora_A", ".lora_B")) for k in names), [k for k in names if not k.endswith((".lora_A", ".lora_B"))]
c = json.load(open(sys.argv[3]))
h, f, d = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
per_layer = 4 * sum(i + o for i, o in [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)])
adapter = c["num_hidden_layers"] * per_layer
assert len(names) == 3 * 2 * 7 * c["num_hidden_layers"], len(names)
assert elems == 3 * adapter, (elems, 3 * adapter)
assert size <= 4 * elems + 64 * 1024, (size, 4 * elems)
assert size * 4 < full, (size, full)
print(f"LoRA checkpoint: {len(names)} tensors, 3 x {adapter} adapter elements, {size} bytes (the base run's: {full})")
PY

# --- resume with dropout is exact ----------------------------------------------------------------
run qlora-cut 1 "${qlora[@]}" --exit-after 3
[ "$(wc -l <qlora-cut.loss)" = 3 ] || die "the first half did not stop after 3 steps"
run qlora-cut 1 "${qlora[@]}"
cmp qlora-dp1.loss qlora-cut.loss || die "resumed QLoRA losses differ from the uninterrupted run: $(paste qlora-dp1.loss qlora-cut.loss)"
"$KILN" export qlora-dp1 --format peft --out a1 >/dev/null 2>&1 || die "export a1"
"$KILN" export qlora-cut --format peft --out a2 >/dev/null 2>&1 || die "export a2"
cmp a1/adapter_model.safetensors a2/adapter_model.safetensors || die "resumed QLoRA adapters differ"
echo "QLoRA with dropout: resumed after 3 steps equals the uninterrupted run bit for bit"

# --- export: PEFT and merged HF ------------------------------------------------------------------
run dora 1 "${lora[@]}" --set lora.dora=true --set lora.rslora=true --set lora.targets='[q_proj, v_proj, down_proj]'
"$KILN" export dora --format peft --out dora-peft >export.log 2>&1 || { cat export.log; die "export peft"; }
"$KILN" export dora --format hf --out dora-hf >>export.log 2>&1 || { cat export.log; die "export hf"; }
"$LOGITS" tiny.yaml --out dora-logits.safetensors "${lora[@]}" --set lora.dora=true --set lora.rslora=true \
  --set lora.targets='[q_proj, v_proj, down_proj]' --set train.run_dir="$WORK/dora" 2>logits.log || { cat logits.log; die "kiln logits"; }
"$KILN" export qlora-dp1 --format hf --out qlora-hf >>export.log 2>&1 || { cat export.log; die "export qlora hf"; }
"$LOGITS" tiny.yaml --out qlora-logits.safetensors "${qlora[@]}" --set train.run_dir="$WORK/qlora-dp1" 2>>logits.log \
  || { cat logits.log; die "kiln qlora logits"; }
"$py" - <<'PY' || die "PEFT / transformers disagree with kiln's adapter export"
import json, warnings
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

def rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()
kiln = load_file("dora-logits.safetensors")
ids = kiln["input_ids"]
base = LlamaForCausalLM.from_pretrained("base-hf", torch_dtype=torch.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = PeftModel.from_pretrained(base, "dora-peft").eval()
bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
assert not bad, bad
cfg = model.peft_config["default"]
assert (cfg.r, cfg.lora_alpha, cfg.use_dora, cfg.use_rslora) == (4, 8, True, True), cfg
assert set(cfg.target_modules) == {"q_proj", "v_proj", "down_proj"}, cfg.target_modules
with torch.no_grad():
    peft_logits = model(ids).logits
r = rel(peft_logits, kiln["logits"]); assert r <= 1e-4, f"PEFT logits vs kiln: {r}"
with torch.no_grad():
    plain = LlamaForCausalLM.from_pretrained("base-hf", torch_dtype=torch.float32).eval()(ids).logits
assert rel(plain, kiln["logits"]) > 1e-2, "the trained adapter does not change the logits: nothing is tested"
merged = model.merge_and_unload().state_dict()
ours = load_file("dora-hf/model.safetensors")
assert set(ours) == set(merged) - {k for k in merged if "rotary" in k}, set(ours) ^ set(merged)
worst = max(rel(ours[k], merged[k]) for k in ours)
assert worst <= 1e-5, f"--format hf vs merge_and_unload: {worst}"
with torch.no_grad():
    r3 = rel(LlamaForCausalLM.from_pretrained("dora-hf", torch_dtype=torch.float32).eval()(ids).logits, kiln["logits"])
assert r3 <= 1e-4, f"merged export vs kiln's logits: {r3}"
q = load_file("qlora-logits.safetensors")
m = LlamaForCausalLM.from_pretrained("qlora-hf", torch_dtype=torch.float32).eval()
with torch.no_grad():
    r2 = rel(m(q["input_ids"]).logits, q["logits"])
assert r2 <= 1e-4, f"QLoRA merged export vs kiln's QLoRA logits: {r2}"
print(f"PEFT loads kiln's DoRA adapter (logits {r:.1e}); --format hf = merge_and_unload ({worst:.1e}); QLoRA merged ({r2:.1e})")
PY

# --- lora.init_from: peft:DIR continues from an adapter -------------------------------------------
run cont 1 "${lora[@]}" --set lora.dora=true --set lora.rslora=true --set lora.targets='[q_proj, v_proj, down_proj]' \
  --set lora.init_from=peft:"$WORK/dora-peft" --set train.steps=0
"$KILN" export cont --format peft --out cont-peft >/dev/null 2>&1 || die "export cont"
cmp dora-peft/adapter_model.safetensors cont-peft/adapter_model.safetensors || die "lora.init_from did not start from the adapter"
# --- LoRA under tensor parallel -----------------------------------------------------------------
# Adapters split with their base (models/lora.h): tp 2, tp 2 with sequence parallel and DoRA +
# rsLoRA, and tp 2 x dp 2 under ZeRO-3 give the dp=1 losses (1e-5) and, through --format peft,
# its adapters (every tensor within 1e-5 relative, Frobenius); a tp 2 checkpoint resumes at tp 1
# with the same losses, and lora.init_from: peft:DIR loads each rank's slices at tp 2.
# Adam's eps 1e-5 and lr 0.002, as in test_tensor_parallel.sh: reduction-order rounding in a
# gradient that cancels to ~0 would otherwise move a step by up to lr (at eps 1e-6 DoRA's
# adapters reached 1.02e-5 of dp=1's under OpenBLAS's rounding).
tpa=("${lora[@]}" --set train.eps=1e-5 --set train.lr=0.002 --set train.min_lr=0.0002)
tpd=("${tpa[@]}" --set lora.dora=true --set lora.rslora=true)
same_adapters() {  # RUN_A RUN_B
  "$KILN" export "$1" --format peft --out "$1-peft" >/dev/null 2>&1 || die "export $1"
  "$KILN" export "$2" --format peft --out "$2-peft" >/dev/null 2>&1 || die "export $2"
  "$py" - "$1-peft" "$2-peft" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1] + "/adapter_model.safetensors"), load_file(sys.argv[2] + "/adapter_model.safetensors")
assert a.keys() == b.keys() and a, sorted(set(a) ^ set(b))
worst = max(np.linalg.norm(a[k].astype(np.float64) - b[k]) / max(1e-12, np.linalg.norm(b[k])) for k in a)
assert worst <= 1e-5, f"adapters differ: {worst:.2e}"
print(f"{len(a)} adapter tensors agree within 1e-5 (worst {worst:.1e})")
PY
}
run tp-ref 1 "${tpa[@]}"
run tp-lora 2 "${tpa[@]}" --set parallel.tp=2
echo -n "LoRA tp=2: "; close tp-ref.loss tp-lora.loss 1e-5 || die "LoRA tp=2 differs from dp=1"
echo -n "    "; same_adapters tp-lora tp-ref || die "LoRA tp=2 adapters differ from dp=1"
run tp-dora-ref 1 "${tpd[@]}"
run tp-dora 2 "${tpd[@]}" --set parallel.tp=2 --set parallel.sequence_parallel=true
echo -n "DoRA + rsLoRA tp=2 sequence parallel: "; close tp-dora-ref.loss tp-dora.loss 1e-5 || die "DoRA tp=2 differs"
echo -n "    "; same_adapters tp-dora tp-dora-ref || die "DoRA tp=2 adapters differ from dp=1"
run tp-z3 4 "${tpa[@]}" --set parallel.tp=2 --set parallel.zero=3
echo -n "LoRA tp=2 x dp=2 ZeRO-3: "; close tp-ref.loss tp-z3.loss 1e-5 || die "LoRA tp2 x dp2 ZeRO-3 differs"
echo -n "    "; same_adapters tp-z3 tp-ref || die "LoRA tp2 x dp2 adapters differ from dp=1"
run tp-cut 2 "${tpa[@]}" --set parallel.tp=2 --exit-after 3
run tp-cut 1 "${tpa[@]}"
grep -q "resumed from .* at step 3" tp-cut.log || die "tp-cut did not resume at step 3"
echo -n "LoRA tp=2 -> tp=1 resume: "; close tp-ref.loss tp-cut.loss 1e-5 || die "LoRA resumed at tp=1 differs"
run tp-cont 2 "${tpd[@]}" --set parallel.tp=2 --set lora.init_from=peft:"$WORK/tp-dora-ref-peft" --set train.steps=0
"$KILN" export tp-cont --format peft --out tp-cont-peft >/dev/null 2>&1 || die "export tp-cont"
cmp tp-dora-ref-peft/adapter_model.safetensors tp-cont-peft/adapter_model.safetensors ||
  die "lora.init_from at tp=2 did not start from the adapter"
echo "lora.init_from: peft:DIR at tp=2 loads the adapter exactly"
echo "LoRA e2e: dp=2 ZeRO 0-3 = dp=1, offload, checkpoint of adapters only, exact resume, PEFT export and import, tp=2"
