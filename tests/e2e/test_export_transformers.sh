#!/usr/bin/env bash
# A trained checkpoint exported with `kiln export` loads in transformers' LlamaForCausalLM and
# continues a prompt exactly as `kiln generate` does (greedy, fp32). Needs the test python
# (build/python_path, the venv setup.sh made, with transformers); without it the test says so.
source "$(dirname "$0")/lib.sh"
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -c "import transformers, sentencepiece" 2>/dev/null; then
  echo "no python with transformers + sentencepiece (build/python_path): cannot check export" >&2
  exit 1
fi
make_tiny
"$KILN" train "$WORK/tiny.yaml" --set train.steps=6 >/dev/null 2>&1 || die "train"
"$KILN" export "$WORK/run" --out "$WORK/hf" >/dev/null 2>&1 || die "export"
prompt="the quick brown fox"
ours=$("$KILN" generate "$WORK/tiny.yaml" --prompt "$prompt" --set generate.max_new_tokens=12 2>/dev/null) || die "generate"
theirs=$("$py" - "$WORK/hf" "$WORK/tok.model" "$prompt" <<'PY'
import sys, torch, sentencepiece as spm
from transformers import LlamaForCausalLM
hf, tok, prompt = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=tok)
model = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).eval()
ids = [sp.bos_id()] + sp.encode(prompt)
with torch.no_grad():
    for _ in range(12):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == sp.eos_id():
            break
        ids.append(nxt)
print(prompt + sp.decode(ids[1 + len(sp.encode(prompt)):]))
PY
) || die "transformers could not load or run the export"
echo "kiln:         $ours"
echo "transformers: $theirs"
[ "$ours" = "$theirs" ] || die "continuations differ"
echo "export -> transformers: same greedy continuation"
