#!/usr/bin/env bash
# Benchmark (not a test): `kiln prep` tokens/s against a plain Python json + sentencepiece
# loop (bench/prep_reference.py) on the same input: the example corpus's en.jsonl + zh.jsonl
# replicated to about 50 MB of pretraining text. Prints both rates and their ratio.
#   bench/prep.sh [CORPUS_DIR]   (default configs/examples/corpus, from scripts/make-example-corpus.sh)
#   KILN=build/kiln  PYTHON=~/.cache/kiln/venv/bin/python  TARGET_MB=50  WORKERS="1 2"
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
corpus=${1:-$here/configs/examples/corpus}
kiln=${KILN:-$here/build/kiln}
python=${PYTHON:-$HOME/.cache/kiln/venv/bin/python}
target_mb=${TARGET_MB:-50}
workers=${WORKERS:-"1 $(nproc)"}
for f in en.jsonl zh.jsonl tokenizer.model; do
  [ -e "$corpus/$f" ] || { echo "bench/prep: $corpus/$f missing (run scripts/make-example-corpus.sh $corpus)" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The input: en + zh, concatenated until it reaches TARGET_MB.
one=$(( $(stat -c %s "$corpus/en.jsonl") + $(stat -c %s "$corpus/zh.jsonl") ))
copies=$(( (target_mb * 1024 * 1024 + one - 1) / one ))
for _ in $(seq "$copies"); do cat "$corpus/en.jsonl" "$corpus/zh.jsonl"; done > "$work/input.jsonl"
mb=$(awk -v b="$(stat -c %s "$work/input.jsonl")" 'BEGIN{printf "%.1f", b/1048576}')
echo "input: $mb MB ($copies copies of en.jsonl + zh.jsonl), $(wc -l < "$work/input.jsonl") lines, $(nproc) cores"

ref=$("$python" "$here/bench/prep_reference.py" "$corpus/tokenizer.model" "$work/ref.bin" "$work/input.jsonl")
ref_tps=$(echo "$ref" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_second"])')
ref_tokens=$(echo "$ref" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["tokens"])')
printf "%-34s %12s tokens  %12.0f tokens/s\n" "python json + sentencepiece loop" "$ref_tokens" "$ref_tps"

for w in $workers; do
  rm -rf "$work/store"
  start=$(date +%s.%N)
  "$kiln" prep "$work/input.jsonl" --tokenizer "$corpus/tokenizer.model" --out "$work/store" \
    --workers "$w" --format text --no-progress 2>/dev/null
  end=$(date +%s.%N)
  tokens=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"])' "$work/store/stats.json")
  inner=$("$python" -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["tokens_per_second"]))' "$work/store/stats.json")
  # Wall time of the whole command (start-up, hashing-free prep, fsync, rename included).
  tps=$(awk -v t="$tokens" -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", t/(b-a)}')
  ratio=$(awk -v a="$tps" -v b="$ref_tps" 'BEGIN{printf "%.2f", a/b}')
  printf "%-34s %12s tokens  %12s tokens/s  %sx  (%s tokens/s without the ~0.5 s start-up)\n" \
    "kiln prep --workers $w" "$tokens" "$tps" "$ratio" "$inner"
  [ "$tokens" = "$ref_tokens" ] || echo "  WARNING: token counts differ (kiln $tokens, python $ref_tokens)"
  cmp -s "$work/store/source_0.tokens" "$work/ref.bin" && echo "  token ids identical to the Python loop's" \
    || echo "  WARNING: token ids differ from the Python loop's"
done
