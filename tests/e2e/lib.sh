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

# The README's worked example in $WORK: its config files (tiny-pretrain.yaml and tiny-$1.yaml)
# with their own relative paths, a 120-line slice of each example corpus file, and a 2-step
# tiny-pretrain run (runs/tiny-pretrain) to start from; `short` holds the settings that keep the
# runs small. Exits 77 without the example corpus. Leaves the shell in $WORK.
example_workspace() {
  local corpus=$ROOT/configs/examples/corpus
  if [ ! -f "$corpus/tokenizer.model" ]; then
    echo "no example corpus ($corpus/tokenizer.model; scripts/setup.sh makes it)"
    exit 77
  fi
  mkdir -p "$WORK/configs/examples/corpus"
  cp "$ROOT"/configs/examples/tiny-{pretrain,$1}.yaml "$WORK/configs/examples/"
  cp "$corpus"/{tokenizer.model,data.json} "$WORK/configs/examples/corpus/"
  for f in en zh sft eval; do head -n 120 "$corpus/$f.jsonl" >"$WORK/configs/examples/corpus/$f.jsonl"; done
  cd "$WORK"
  short=(--set train.warmup_steps=1 --set data.seq_len=64 --set train.micro_batch_size=2 --set train.global_batch_size=4)
  "$KILN" train configs/examples/tiny-pretrain.yaml --set train.steps=2 "${short[@]}" >pre.log 2>&1 \
    || { cat pre.log; die "pretrain"; }
}
