# Shared by the end-to-end tests: kiln as a user runs it, on the data fixtures in a temp dir.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KILN=${KILN:-$ROOT/build/kiln}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-e2e.XXXXXX")
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo

die() { echo "FAIL: $*" >&2; exit 1; }

# A tokenizer and a tiny-model config over tests/fixtures/data in $WORK.
make_tiny() {
  cp "$ROOT"/tests/fixtures/data/{data.json,pretrain.jsonl,sft_firefly.jsonl,tokenizer_corpus.txt} "$WORK/"
  [ -f "$WORK/tok.model" ] || "$KILN" tokenizer train --input "$WORK/tokenizer_corpus.txt" --out "$WORK/tok" \
    --vocab-size 700 --character-coverage 1.0 >/dev/null 2>&1 || die "tokenizer train"
  cat >"$WORK/tiny.yaml" <<YAML
model: {vocab_size: 700, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2, max_seq_len: 64}
tokenizer: tok.model
data: {mixture: data.json, seq_len: 32, eval: pretrain.jsonl}
train: {run_dir: $WORK/run, steps: 8, micro_batch_size: 2, global_batch_size: 8, lr: 0.01, min_lr: 0.001,
        warmup_steps: 1, threads: 1}
YAML
}

# The losses of a run, one per line, as written (full precision).
losses() { python3 -c 'import json,sys; [print(repr(r["loss"])) for r in map(json.loads, open(sys.argv[1])) if "loss" in r]' "$1/metrics.jsonl"; }

# Two loss files agree within a relative tolerance.
close() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
a = [float(x) for x in open(sys.argv[1])]
b = [float(x) for x in open(sys.argv[2])]
tol = float(sys.argv[3])
assert len(a) == len(b) and a, f"lengths {len(a)} vs {len(b)}"
for i, (x, y) in enumerate(zip(a, b)):
    assert abs(x - y) <= tol * abs(x), f"step {i+1}: {x} vs {y} (rel {abs(x-y)/abs(x):.2e} > {tol})"
print(f"{len(a)} losses agree within {tol}")
PY
}
