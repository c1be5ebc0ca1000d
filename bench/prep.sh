#!/usr/bin/env bash
# Benchmark (not a test): `kiln prep` tokens/s against a plain Python json + sentencepiece
# loop (bench/prep_reference.py) with the same number of workers (a multiprocessing pool), on
# the same input: the example corpus's en.jsonl + zh.jsonl replicated to about 50 MB of
# pretraining text. Prints both rates, their ratio, and where kiln's time went.
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

field() { "$python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]] if sys.argv[2] in d else d["sources"][0][sys.argv[2]])' "$@"; }

# Disk alone: the input read once (page cache warm, as for both runs below).
start=$(date +%s.%N); cat "$work/input.jsonl" > /dev/null; end=$(date +%s.%N)
awk -v a="$start" -v b="$end" -v mb="$mb" 'BEGIN{printf "read the input: %.2f s (%.0f MB/s)\n", b-a, mb/(b-a)}'

for w in $workers; do
  # The reference with the same number of workers: json + sentencepiece in a process pool.
  "$python" "$here/bench/prep_reference.py" --workers "$w" "$corpus/tokenizer.model" "$work/ref.bin" "$work/input.jsonl" \
    > "$work/ref.json"
  ref_tps=$(field "$work/ref.json" tokens_per_second)
  ref_tokens=$(field "$work/ref.json" tokens)
  printf "%-34s %12s tokens  %12.0f tokens/s\n" "python loop, pool of $w" "$ref_tokens" "$ref_tps"

  rm -rf "$work/store"
  start=$(date +%s.%N)
  "$kiln" prep "$work/input.jsonl" --tokenizer "$corpus/tokenizer.model" --out "$work/store" \
    --workers "$w" --format text --no-progress 2>/dev/null
  end=$(date +%s.%N)
  tokens=$(field "$work/store/stats.json" tokens)
  inner=$(field "$work/store/stats.json" tokens_per_second)
  # Wall time of the whole command (start-up, fsync, rename included).
  tps=$(awk -v t="$tokens" -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", t/(b-a)}')
  ratio=$(awk -v a="$tps" -v b="$ref_tps" 'BEGIN{printf "%.2f", a/b}')
  inner_ratio=$(awk -v a="$inner" -v b="$ref_tps" 'BEGIN{printf "%.2f", a/b}')
  printf "%-34s %12s tokens  %12s tokens/s  %sx  (prep itself: %.0f tokens/s, %sx)\n" \
    "kiln prep --workers $w" "$tokens" "$tps" "$ratio" "$inner" "$inner_ratio"
  printf "  reading %.2f s, writing %.2f s, waiting for tokenizing %.2f s, of %.2f s\n" \
    "$(field "$work/store/stats.json" read_seconds)" "$(field "$work/store/stats.json" write_seconds)" \
    "$(field "$work/store/stats.json" tokenize_wait_seconds)" "$(field "$work/store/stats.json" seconds)"
  [ "$tokens" = "$ref_tokens" ] || echo "  WARNING: token counts differ (kiln $tokens, python $ref_tokens)"
  cmp -s "$work/store/source_0.tokens" "$work/ref.bin" && echo "  token ids identical to the Python loop's" \
    || echo "  WARNING: token ids differ from the Python loop's"
done
