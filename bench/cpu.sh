#!/usr/bin/env bash
# Benchmark (not a test): kiln's CPU training throughput against the PyTorch reference
# (bench/cpu_reference.py: transformers LlamaForCausalLM with SDPA, AdamW(foreach=True),
# clipping; eager and under torch.compile) on the issue-11 CPU case, in one command:
#   dense:  one document per row (dense causal attention), loss on every token
#   packed: SFT conversations packed several to a row (block-diagonal causal attention), loss
#           on the assistant turns only; the reference packs random tokens into documents of the
#           same lengths (position_ids restarting per document) with a third of each unmasked
# Model: bench/configs/cpu.yaml (hidden 512, 4 layers, 8/4 heads, FFN 1408, vocab 4000, seq 512,
# micro-batch 4, fp32). The runs are interleaved (kiln, eager, compile; ROUNDS times, the order
# rotated each round) so that load from other processes falls on all three alike; each figure
# is the median over rounds of each run's median tokens/s over its steps after WARMUP.
#
#   bench/cpu.sh [CASES]            CASES: "dense packed" (default)
#   KILN=build/kiln PYTHON=~/.cache/kiln/venv/bin/python ROUNDS=3 STEPS=8 WARMUP=3 OUT=DIR
#   SET="--set key=value ..."       extra kiln overrides
#
# Prints: case, kiln tok/s, eager tok/s, compile tok/s, the two ratios, peak RSS of each (GiB).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cases=${1:-dense packed}
kiln=${KILN:-$here/build/kiln}
python=${PYTHON:-$HOME/.cache/kiln/venv/bin/python}
rounds=${ROUNDS:-3}
steps=${STEPS:-8}
warmup=${WARMUP:-3}
extra=${SET:-}
[ -x "$kiln" ] || { echo "bench/cpu: $kiln not built (./scripts/setup.sh)" >&2; exit 2; }
"$python" -c 'import torch, transformers' 2>/dev/null ||
  { echo "bench/cpu: $python lacks torch or transformers (PYTHON=...)" >&2; exit 2; }
for c in $cases; do
  case $c in dense|packed) ;; *) echo "bench/cpu: case $c: valid: dense | packed" >&2; exit 2 ;; esac
done
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-cpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=${OUT:-$work/out}
mkdir -p "$out"

# Synthetic corpus: words of random letters, Zipf-like. dense: documents far longer than a row
# (truncated, one per row); packed: firefly conversations of 60-450 tokens, several per row.
"$python" "$here/bench/synthetic_corpus.py" "$work" --vocab 6000 --tokenizer-lines 20000 --dense 200 2000 \
  --sft 3000 --sft-file packed.jsonl
"$kiln" tokenizer train --input "$work/tokenizer.txt" --out "$work/tok" --vocab-size 4000 >/dev/null 2>&1
# The packed reference's document lengths: the conversations' token counts under the same tokenizer
# and template (<s> human </s> assistant </s>), cut at a row.
"$python" - "$work" <<'PY'
import json, sys
import sentencepiece as spm
work = sys.argv[1]
sp = spm.SentencePieceProcessor(model_file=f"{work}/tok.model")
with open(f"{work}/doc_lens.txt", "w") as f:
    for line in open(f"{work}/packed.jsonl"):
        turn = json.loads(line)["conversation"][0]
        n = len(sp.encode(turn["human"])) + len(sp.encode(turn["assistant"])) + 3
        f.write(f"{min(n, 512)}\n")
PY

kiln_args() {  # case -> kiln --set arguments for its data
  if [ "$1" = dense ]; then
    echo "--set data.mixture=$work/dense.jsonl --set data.format=text --set data.packing=false --set data.overlong=truncate"
  else
    echo "--set data.mixture=$work/packed.jsonl --set data.format=firefly --set data.template=firefly --set data.loss=all_turns --set data.packing=true"
  fi
}

run_kiln() {  # case round -> "tok/s peak_gib"
  local run=$work/run-$1-$2
  # shellcheck disable=SC2046,SC2086
  if ! "$kiln" train "$here/bench/configs/cpu.yaml" --set tokenizer="$work/tok.model" $(kiln_args "$1") \
      --set train.run_dir="$run" --set train.steps=$((warmup + steps)) --set checkpoint.every=0 $extra \
      > "$out/kiln-$1-$2.log" 2>&1; then
    echo "bench/cpu: kiln train failed ($1, round $2; log: $out/kiln-$1-$2.log):" >&2
    tail -5 "$out/kiln-$1-$2.log" >&2
    exit 1
  fi
  cp "$run/metrics.jsonl" "$out/kiln-$1-$2.metrics.jsonl"
  rm -rf "$run"
  "$python" - "$out/kiln-$1-$2.metrics.jsonl" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and '"tokens_per_s"' in l]
timed = [r for r in rows if r["step"] > int(sys.argv[2])]
print(round(statistics.median(r["tokens_per_s"] for r in timed)), round(rows[-1]["peak_mem_bytes"] / 2**30, 2))
PY
}

run_ref() {  # mode case round -> "tok/s peak_gib"
  if ! "$python" "$here/bench/cpu_reference.py" "$1" "$2" "$steps" "$warmup" "$work/doc_lens.txt" \
      > "$out/ref-$1-$2-$3.log" 2>&1; then
    echo "bench/cpu: reference $1 failed ($2, round $3; log: $out/ref-$1-$2-$3.log):" >&2
    tail -5 "$out/ref-$1-$2-$3.log" >&2
    exit 1
  fi
  tail -1 "$out/ref-$1-$2-$3.log" | "$python" -c 'import json,sys; r=json.loads(sys.stdin.read()); print(r["tokens_per_s"], r["peak_rss_gib"])'
}

summary=$out/summary.txt
: > "$summary"
for c in $cases; do
  for r in $(seq 1 "$rounds"); do
    # Rotate who goes first so that a slow stretch of the machine does not always hit one side.
    order=("kiln" "eager" "compile")
    shift_by=$(( (r - 1) % 3 ))
    order=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
    for who in "${order[@]}"; do
      if [ "$who" = kiln ]; then res=$(run_kiln "$c" "$r"); else res=$(run_ref "$who" "$c" "$r"); fi
      echo "$c $who $res" >> "$summary"
      echo "bench/cpu: $c round $r $who: $res" >&2
    done
  done
done

echo "bench/cpu.sh $(date -u +%Y-%m-%d), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds x $steps timed steps after $warmup warm-up steps"
"$python" - "$summary" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    case, who, tps, peak = line.split()
    runs[case][who].append((float(tps), float(peak)))
med = lambda v: statistics.median(v)
print("| case | kiln tok/s | eager tok/s | compile tok/s | kiln/eager | kiln/compile | peak GiB kiln / eager / compile |")
print("|---|---|---|---|---|---|---|")
for case, r in runs.items():
    k, e, c = (med([x[0] for x in r[w]]) for w in ("kiln", "eager", "compile"))
    pk, pe, pc = (max(x[1] for x in r[w]) for w in ("kiln", "eager", "compile"))
    print(f"| {case} | {k:.0f} | {e:.0f} | {c:.0f} | {k / e:.2f}x | {k / c:.2f}x | {pk:.2f} / {pe:.2f} / {pc:.2f} |")
PY
