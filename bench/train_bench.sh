#!/usr/bin/env bash
# Benchmark (not a test): kiln's training throughput against the PyTorch reference
# (../shared/bench/pytorch_baseline.py: transformers LlamaForCausalLM, SDPA, fused AdamW) on the
# same GPU in the same command, for the 1.1B cases
#   A: seq 4096, micro-batch 4                       (bench/configs/train-a.yaml)
#   C: seq 16384, micro-batch 1, activation ckpt     (bench/configs/train-c.yaml)
# on synthetic text (random words; one document per row, as the reference's rows), and
# prints tokens/s of both, kiln's peak memory and the ratio kiln / reference. See bench/README.md.
#
#   bench/train_bench.sh [CASES]          CASES: "A C" (default), "A", "C"
#   KILN=build/kiln  PYTHON=python3  STEPS=12 (timed)  WARMUP=3  DOCS=long|packed
#   REFERENCE=../shared/bench/pytorch_baseline.py (REFERENCE=none: kiln only)
#   SET="--set model.num_layers=2 ..."    extra kiln overrides (e.g. a tiny check on the CPU)
#   OUT=DIR                               keep metrics, logs and the summary there
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cases=${1:-A C}
kiln=${KILN:-$here/build/kiln}
python=${PYTHON:-python3}
steps=${STEPS:-12}
warmup=${WARMUP:-3}
docs=${DOCS:-long}
reference=${REFERENCE:-$here/../shared/bench/pytorch_baseline.py}
extra=${SET:-}
[ -x "$kiln" ] || { echo "bench/train_bench: $kiln not built (cmake --build build --target kiln)" >&2; exit 2; }
[ "$reference" = none ] || [ -e "$reference" ] || {
  echo "bench/train_bench: reference $reference not found (REFERENCE=path/to/pytorch_baseline.py, or none)" >&2; exit 2; }
case $docs in long|packed) ;; *) echo "bench/train_bench: DOCS=$docs: valid: long | packed" >&2; exit 2 ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${OUT:-$work/out}
mkdir -p "$out"

# Synthetic corpus: words of random letters with a Zipf-like frequency. DOCS=long: every
# document outruns seq_len (truncated: one document per row, dense causal attention as in the
# reference); DOCS=packed: documents of about 1k tokens, several per row (varlen attention).
"$python" - "$work" "$docs" <<'PY'
import json, random, sys
work, docs = sys.argv[1], sys.argv[2]
rng = random.Random(0)
letters = "abcdefghijklmnopqrstuvwxyz"
vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(6000)]
weights = [1.0 / (i + 1) for i in range(len(vocab))]
def words(n):
    return " ".join(rng.choices(vocab, weights, k=n))
with open(f"{work}/tokenizer.txt", "w") as f:
    for _ in range(20000):
        f.write(words(20) + "\n")
n_docs, doc_words = (96, 24000) if docs == "long" else (1600, 700)
with open(f"{work}/docs.jsonl", "w") as f:
    for _ in range(n_docs):
        f.write(json.dumps({"text": words(doc_words)}) + "\n")
PY
"$kiln" tokenizer train --input "$work/tokenizer.txt" --out "$work/tok" --vocab-size 4000 >/dev/null 2>&1

median() { "$python" -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v) if v else 0)' "$@"; }

summary=$out/summary.txt
: > "$summary"
for c in $cases; do
  lc=$(echo "$c" | tr 'A-Z' 'a-z')
  config=$here/bench/configs/train-$lc.yaml
  [ -e "$config" ] || { echo "bench/train_bench: no config for case $c ($config)" >&2; exit 2; }
  run=$work/run-$lc
  # shellcheck disable=SC2086
  if ! "$kiln" train "$config" --set tokenizer="$work/tok.model" --set data.mixture="$work/docs.jsonl" \
      --set train.run_dir="$run" --set train.steps=$((warmup + steps)) $extra > "$out/kiln-$lc.log" 2>&1; then
    echo "bench/train_bench: kiln train failed for case $c (log: $out/kiln-$lc.log):" >&2
    tail -5 "$out/kiln-$lc.log" >&2
    exit 1
  fi
  cp "$run/metrics.jsonl" "$out/kiln-$lc.metrics.jsonl"
  # Steps after the warm-up: median tokens/s, peak memory of the last step.
  read -r kiln_tps kiln_peak < <("$python" - "$run/metrics.jsonl" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
timed = [r for r in rows if r["step"] > int(sys.argv[2])]
print(round(statistics.median(r["tokens_per_s"] for r in timed)), round(rows[-1]["peak_mem_bytes"] / 2**30, 2))
PY
)
  echo "$c kiln $kiln_tps $kiln_peak" >> "$summary"
done

if [ "$reference" != none ]; then
  # The reference cases are named by the same letters; it writes pytorch_baseline.jsonl to $OUT.
  # shellcheck disable=SC2086
  OUT=$out "$python" "$reference" $cases > "$out/reference.log" 2>&1 || true
  "$python" - "$out/pytorch_baseline.jsonl" >> "$summary" <<'PY' || echo "bench/train_bench: reference failed (see $out/reference.log)" >&2
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "error" in r:
        print(r["case"][0], "reference error", r["error"][:80].replace(" ", "_"))
    else:
        print(r["case"][0], "reference", r["tokens_per_s"], r["peak_mem_gib"])
PY
fi

echo "docs: $docs, $steps timed steps after $warmup warm-up steps"
"$python" - "$summary" <<'PY'
import collections, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    case, who, *vals = line.split()
    rows[case][who] = vals
print("%-5s %14s %10s %16s %10s %8s" % ("case", "kiln tok/s", "kiln GiB", "reference tok/s", "ref GiB", "ratio"))
for case, r in sorted(rows.items()):
    k = r.get("kiln", ["-", "-"])
    ref = r.get("reference", ["-", "-"])
    ratio = "%.2f" % (float(k[0]) / float(ref[0])) if k[0] != "-" and ref[0] not in ("-", "error") else "-"
    print("%-5s %14s %10s %16s %10s %8s" % (case, k[0], k[1], ref[0], ref[1], ratio))
PY
