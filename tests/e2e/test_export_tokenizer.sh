#!/usr/bin/env bash
# A trained checkpoint exported with `kiln export` loads in transformers on its own: the model
# (LlamaForCausalLM), the tokenizer (AutoTokenizer, fast, and LlamaTokenizer, slow) and the
# generation config from the export directory alone. The tokenizers give kiln's ids (a plain
# prompt and one with the chat template's special pieces), and model.generate continues a
# prompt exactly as `kiln generate` does (greedy, fp32). Needs the test python
# (build/python_path, the venv setup.sh made, with transformers); without it the test says so.
source "$(dirname "$0")/lib.sh"
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -c "import transformers, sentencepiece" 2>/dev/null; then
  echo "no python with transformers + sentencepiece (build/python_path): cannot check export" >&2
  exit 1
fi
make_tiny
"$KILN" train "$WORK/tiny.yaml" --set train.steps=6 --set data.template=chatml >/dev/null 2>&1 || die "train"
"$KILN" export "$WORK/run" --out "$WORK/hf" >/dev/null 2>&1 || die "export"
for f in config.json tokenizer.model tokenizer_config.json special_tokens_map.json generation_config.json; do
  [ -f "$WORK/hf/$f" ] || die "export wrote no $f"
done
cmp -s "$WORK/hf/tokenizer.model" "$WORK/tok.model" || die "tokenizer.model is not the run's tokenizer"
prompt="the quick brown fox"
ours=$("$KILN" generate "$WORK/tiny.yaml" --prompt "$prompt" --set generate.max_new_tokens=12 2>/dev/null) || die "generate"
theirs=$("$py" - "$WORK/hf" "$WORK/tok.model" "$prompt" <<'PY'
import sys, torch, sentencepiece as spm
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM, LlamaTokenizer
hf, tok_path, prompt = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=tok_path)  # what kiln encodes with
fast = AutoTokenizer.from_pretrained(hf)
slow = LlamaTokenizer.from_pretrained(hf)
chat = "<|im_start|>user\nfox jumps<|im_end|>\n<|im_start|>assistant\n"
for text in [prompt, chat, "lazy dog  sea\nmoon"]:
    want = [sp.bos_id()] + sp.encode(text)
    for name, t in [("fast", fast), ("slow", slow)]:
        got = t(text).input_ids
        assert got == want, f"{name} tokenizer: {text!r}: {got} != kiln's {want}"
import json, os
named = json.load(open(os.path.join(hf, "special_tokens_map.json")))["additional_special_tokens"]
assert named == ["<|im_start|>", "<|im_end|>"], named
assert fast.convert_tokens_to_ids("<|im_start|>") == sp.piece_to_id("<|im_start|>")
gen = GenerationConfig.from_pretrained(hf)
assert gen.eos_token_id == sp.eos_id() and gen.bos_token_id == sp.bos_id() and not gen.do_sample, gen
model = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).eval()
ids = fast(prompt, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=12, attention_mask=torch.ones_like(ids))[0, ids.shape[1]:].tolist()
if out and out[-1] == sp.eos_id():
    out = out[:-1]
print(prompt + fast.decode(out))
PY
) || die "transformers could not load or run the export"
echo "kiln:         $ours"
echo "transformers: $theirs"
[ "$ours" = "$theirs" ] || die "continuations differ"
echo "export -> transformers: same ids (fast and slow tokenizer), same greedy continuation"
