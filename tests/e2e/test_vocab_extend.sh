#!/usr/bin/env bash
# The vocabulary-extension workflow of the README (issue 14) as a user runs it: extend the
# example tokenizer with pieces trained on the Chinese fixture (`kiln tokenizer extend`), refuse
# the 96-row HF fixture until model.vocab_size says to grow it, train stage 1 (embedding and head
# only) then stage 2 (everything, resumed from stage 1's checkpoint), export, and load the export
# in transformers: the vocabulary is the extended one, the exported tokenizer gives kiln's ids,
# transformers' logits equal kiln's (1e-4 relative) and greedy continuations of a Chinese prompt
# (new pieces) equal kiln generate's.
source "$(dirname "$0")/lib.sh"
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -c "import transformers, sentencepiece" 2>/dev/null; then
  echo "no python with transformers + sentencepiece (build/python_path): cannot check export" >&2
  exit 1
fi
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
make_tiny
cp "$ROOT/tests/fixtures/data/zh_corpus.txt" "$WORK/"
python3 -c 'import json,sys; [print(json.dumps({"text": l.strip()}, ensure_ascii=False)) for l in open(sys.argv[1]) if l.strip()]' \
  "$WORK/zh_corpus.txt" >"$WORK/zh.jsonl"

# 1. The example tokenizer extended with a 600-piece BPE of the Chinese text.
"$KILN" tokenizer extend --base "$WORK/tok.model" --input "$WORK/zh_corpus.txt" --vocab-size 600 \
  --out "$WORK/ext.model" >"$WORK/extend.log" 2>&1 || { cat "$WORK/extend.log"; die "tokenizer extend"; }
cat "$WORK/extend.log"
grep -q "tokens per character on .* sample lines: .* before, .* after" "$WORK/extend.log" || die "no tokens/char line"
pieces=$("$py" -c 'import sentencepiece as s,sys; print(s.SentencePieceProcessor(model_file=sys.argv[1]).get_piece_size())' "$WORK/ext.model")
[ "$pieces" -gt 900 ] || die "extended tokenizer has $pieces pieces"

cat >"$WORK/ext.yaml" <<YAML
model: {init_from: "hf:$ROOT/tests/fixtures/hf/llama_linear"}
tokenizer: ext.model
data: {mixture: zh.jsonl, seq_len: 32}
train: {run_dir: $WORK/run, steps: 4, micro_batch_size: 2, global_batch_size: 4, lr: 0.01, min_lr: 0.001, threads: 1}
YAML
# 2. Refused in one line until model.vocab_size grows the model.
set +e
msg=$("$KILN" train "$WORK/ext.yaml" 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" = 2 ] || die "a tokenizer larger than the model: exit $rc, expected 2 ($msg)"
echo "$msg" | grep -q "$pieces pieces, more than model.vocab_size 96 .*set model.vocab_size: $pieces" \
  || die "unexpected refusal: $msg"
[ "$(echo "$msg" | grep -c 'error')" = 1 ] || die "more than one error line: $msg"
[ ! -d "$WORK/run/checkpoints" ] || die "the refused run wrote checkpoints"

# 3. Stage 1 (embedding and head, 2 of 4 steps), stage 2 (everything, resumed).
"$KILN" train "$WORK/ext.yaml" --set model.vocab_size=$pieces --set 'train.trainable=[embed_tokens, lm_head]' \
  --exit-after 2 >"$WORK/stage1.log" 2>&1 || { tail "$WORK/stage1.log"; die "stage 1"; }
grep -q "trainable: .* parameters (2 tensors); frozen: 28 tensors" "$WORK/stage1.log" || die "stage 1 trained more"
"$KILN" train "$WORK/ext.yaml" --set model.vocab_size=$pieces >"$WORK/stage2.log" 2>&1 || { tail "$WORK/stage2.log"; die "stage 2"; }
grep -q "resumed from .*step-00000002 at step 2" "$WORK/stage2.log" || die "stage 2 did not resume stage 1"

# 3b. The same two stages on 2 ranks (stage 1 under ZeRO-3: every rank reads only its partition
# of the grown embedding and head, frozen layers whole; stage 2 under ZeRO-2, resumed) give the
# single process's losses.
mpirun -np 2 "$KILN" train "$WORK/ext.yaml" --set train.run_dir="$WORK/run-mp" --set model.vocab_size=$pieces \
  --set 'train.trainable=[embed_tokens, lm_head]' --set parallel.zero=3 --exit-after 2 >"$WORK/mp1.log" 2>&1 \
  || { tail "$WORK/mp1.log"; die "stage 1 on 2 ranks"; }
mpirun -np 2 "$KILN" train "$WORK/ext.yaml" --set train.run_dir="$WORK/run-mp" --set model.vocab_size=$pieces \
  --set parallel.zero=2 >"$WORK/mp2.log" 2>&1 || { tail "$WORK/mp2.log"; die "stage 2 on 2 ranks"; }
losses "$WORK/run" >"$WORK/one.losses"
losses "$WORK/run-mp" >"$WORK/two.losses"
close "$WORK/one.losses" "$WORK/two.losses" 1e-5 || die "2 ranks (ZeRO-3 then ZeRO-2) differ from one process"

# 4. Export; transformers loads weights and tokenizer, logits and continuations equal kiln's.
"$KILN" export "$WORK/run" --out "$WORK/hf" >/dev/null 2>&1 || die "export"
"$ROOT/build/kiln_test_logits" "$WORK/ext.yaml" --set model.vocab_size=$pieces --out "$WORK/ext.logits" \
  2>/dev/null || die "kiln logits"
"$py" "$ROOT/tests/e2e/export_parity.py" check "$WORK/hf" "$WORK/ext.logits" >/dev/null 2>&1 \
  || "$py" "$ROOT/tests/e2e/export_parity.py" check "$WORK/hf" "$WORK/ext.logits" || die "logits parity"
# The HF fixtures (untied and tied) grown from 96 to 2000 rows and written back: transformers
# loads vocab 2000 and its logits equal kiln's.
for src in llama_linear llama_dynamic_tied; do
  printf 'model: {init_from: "hf:%s", vocab_size: 2000}\ndata: {seq_len: 16}\ntrain: {run_dir: %s}\n' \
    "$ROOT/tests/fixtures/hf/$src" "$WORK/none-$src" >"$WORK/$src.yaml"
  "$ROOT/build/kiln_test_logits" "$WORK/$src.yaml" --out "$WORK/$src.logits" --export "$WORK/grown-$src" \
    2>/dev/null || die "grow + export $src"
  "$py" -c 'import json,sys; v=json.load(open(sys.argv[1]))["vocab_size"]; assert v == 2000, v' \
    "$WORK/grown-$src/config.json" || die "$src: exported vocab_size"
  "$py" "$ROOT/tests/e2e/export_parity.py" check "$WORK/grown-$src" "$WORK/$src.logits" || die "$src grown to 2000: logits"
done

prompt="今天天气很好，"
ours=$("$KILN" generate "$WORK/ext.yaml" --set model.vocab_size=$pieces --prompt "$prompt" \
  --set generate.max_new_tokens=10 2>/dev/null) || die "generate"
"$py" - "$WORK/hf" "$WORK/ext.model" "$prompt" "$pieces" <<'PY' || die "the export's vocabulary or tokenizer is wrong"
import sys, sentencepiece as spm
from transformers import AutoConfig, LlamaTokenizer
from safetensors import safe_open
import glob
hf, tok, prompt, pieces = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sp = spm.SentencePieceProcessor(model_file=tok)
assert sp.get_piece_size() == pieces, (sp.get_piece_size(), pieces)
assert AutoConfig.from_pretrained(hf).vocab_size == pieces
rows = [safe_open(f, "pt").get_slice("model.embed_tokens.weight").get_shape()[0]
        for f in glob.glob(hf + "/*.safetensors") if "model.embed_tokens.weight" in safe_open(f, "pt").keys()]
assert rows == [pieces], rows
t = LlamaTokenizer.from_pretrained(hf)  # the exported tokenizer.model
ids = [sp.bos_id()] + sp.encode(prompt)
assert t(prompt).input_ids == ids, (t(prompt).input_ids, ids)
assert max(ids) >= 700, "the prompt should use pieces the extension added"
PY
theirs=$("$py" "$ROOT/tests/e2e/export_parity.py" greedy "$WORK/hf" "$WORK/ext.model" "$prompt" 10) \
  || die "transformers could not load or run the export"
echo "kiln:         $ours"
echo "transformers: $theirs"
[ "$ours" = "$theirs" ] || die "continuations differ"
echo "vocabulary extension: extended, refused then grown, two stages, export loads in transformers"
