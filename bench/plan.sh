#!/usr/bin/env bash
# Benchmark (not a test): `kiln plan`'s per-rank peak memory against what training really peaks
# at, case by case. For each case: `kiln plan --world NP` (its "peak resident" line), then a
# one-step `kiln train` (mpirun -np NP when NP > 1) and the largest of the ranks' peak resident
# sets it logs ("peak memory per rank (MiB, resident)": getrusage's ru_maxrss, which covers the
# step and the checkpoint save after it). Prints one table (case, ranks, estimate, measured,
# ratio) and exits 1 when any estimate is off by more than TOL (default 0.20) of the measured peak.
#
#   bench/plan.sh [CASE ...]        default: every case below; `bench/plan.sh list` names them
#   KILN=build/kiln TOL=0.2 OUT=DIR (keeps the logs) NICE=10
#
# Cases: shapes "demo" (hidden 128, 4 layers, 4/2 heads, 1.8 M parameters), "cpu" (bench/cpu.sh's
# hidden 512, 4 layers, 16 M) and "mid" (hidden 768, 8 layers, 12/4 heads, FFN 2048, 56 M); one
# document per row (dense causal) or packed SFT conversations (attention within documents);
# sequence 512 to 16384; activation checkpointing none / selective / full; ZeRO 0-3 at dp 1, 2, 4.
# fp32 on the CPU, as the CPU figures are resident sizes. Synthetic corpus, tokenizer of 4000.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN:-$here/build/kiln}
tol=${TOL:-0.20}
nice_level=${NICE:-10}
[ -x "$kiln" ] || { echo "bench/plan: $kiln not built (./scripts/setup.sh)" >&2; exit 2; }

# name | ranks | overrides
all_cases=(
  "demo-512|1|shape=demo seq=512 mbs=4"
  "demo-4096-none|1|shape=demo seq=4096 mbs=1"
  "demo-4096-full|1|shape=demo seq=4096 mbs=1 ckpt=full"
  "demo-16384-selective|1|shape=demo seq=16384 mbs=1 ckpt=selective"
  "sft-packed-4096|1|shape=demo seq=4096 mbs=1 data=sft"
  "sft-packed-8192-full|1|shape=demo seq=8192 mbs=1 data=sft ckpt=full"
  "sft-packed-16384-sel|1|shape=demo seq=16384 mbs=1 data=sft ckpt=selective"
  "sft-packed-16384-none|1|shape=demo seq=16384 mbs=1 data=sft"
  "cpu-512|1|shape=cpu seq=512 mbs=4"
  "cpu-2048-sel|1|shape=cpu seq=2048 mbs=1 ckpt=selective"
  "mid-512|1|shape=mid seq=512 mbs=2"
  "mid-1024-full|1|shape=mid seq=1024 mbs=2 ckpt=full"
  "demo-z1-dp2|2|shape=demo seq=512 mbs=2 zero=1"
  "demo-z2-dp2|2|shape=demo seq=512 mbs=2 zero=2"
  "demo-z3-dp2|2|shape=demo seq=1024 mbs=2 zero=3"
  "mid-z0-dp2|2|shape=mid seq=512 mbs=1 zero=0"
  "mid-z1-dp4|4|shape=mid seq=256 mbs=1 zero=1"
  "mid-z2-dp4|4|shape=mid seq=256 mbs=1 zero=2"
  "mid-z3-dp4|4|shape=mid seq=512 mbs=1 zero=3"
)
if [ "${1:-}" = list ]; then printf '%s\n' "${all_cases[@]}" | cut -d'|' -f1; exit 0; fi
selected=()
if [ $# -eq 0 ]; then
  selected=("${all_cases[@]}")
else
  for want in "$@"; do
    found=
    for c in "${all_cases[@]}"; do [ "${c%%|*}" = "$want" ] && selected+=("$c") && found=1; done
    [ -n "$found" ] || { echo "bench/plan: no case '$want' (bench/plan.sh list)" >&2; exit 2; }
  done
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-plan.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=${OUT:-$work/out}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo

# Synthetic corpus: words of random letters, Zipf-like; dense documents longer than the longest
# row (one per row, truncated), and short SFT conversations (several packed to a row).
python3 "$here/bench/synthetic_corpus.py" "$work" --vocab 6000 --tokenizer-lines 5000 --dense 24 12000 --sft 1500
"$kiln" tokenizer train --input "$work/tokenizer.txt" --out "$work/tok" --vocab-size 4000 >/dev/null 2>&1
cat >"$work/base.yaml" <<YAML
model: {vocab_size: 4000, hidden_size: 128, num_layers: 4, num_heads: 4, num_kv_heads: 2, max_seq_len: 16384}
tokenizer: tok.model
data: {mixture: dense.jsonl, format: text, packing: false, overlong: truncate, seq_len: 512}
train: {steps: 1, micro_batch_size: 1, lr: 1.0e-4, warmup_steps: 0, precision: fp32, log_every: 1,
        tensorboard: none}
checkpoint: {every: 0, keep_last: 1}
YAML

sets_for() {  # overrides -> kiln --set arguments
  local kv
  for kv in $1; do
    local k=${kv%%=*} v=${kv#*=}
    case $k in
      shape)
        case $v in
          demo) ;;
          cpu) echo "--set model.hidden_size=512 --set model.num_heads=8 --set model.num_kv_heads=4 --set model.ffn_hidden_size=1408" ;;
          mid) echo "--set model.hidden_size=768 --set model.num_layers=8 --set model.num_heads=12 --set model.num_kv_heads=4 --set model.ffn_hidden_size=2048" ;;
        esac ;;
      seq) echo "--set data.seq_len=$v" ;;
      mbs) echo "--set train.micro_batch_size=$v" ;;
      ckpt) echo "--set train.activation_checkpointing=$v" ;;
      zero) echo "--set parallel.zero=$v" ;;
      data) [ "$v" = sft ] && echo "--set data.mixture=sft.jsonl --set data.format=firefly --set data.packing=true" ;;
    esac
  done
}

printf '%-24s %5s %13s %13s %7s  %s\n' case ranks "plan MiB" "measured MiB" ratio "" | tee "$out/table.txt"
failed=0
started=$(date +%s)
for c in "${selected[@]}"; do
  IFS='|' read -r name np spec <<<"$c"
  # shellcheck disable=SC2207
  args=($(sets_for "$spec") --set train.run_dir="$work/run-$name")
  (cd "$work" && "$kiln" plan base.yaml --world "$np" "${args[@]}") >"$out/$name.plan" 2>&1 ||
    { echo "$name: kiln plan failed:"; tail -5 "$out/$name.plan"; failed=1; continue; }
  est=$(sed -n 's/^peak resident: *\([0-9]*\) MiB per rank/\1/p' "$out/$name.plan")
  launch=()
  [ "$np" -gt 1 ] && launch=(mpirun --oversubscribe --allow-run-as-root -np "$np")
  (cd "$work" && nice -n "$nice_level" "${launch[@]}" "$kiln" train base.yaml "${args[@]}") >"$out/$name.train" 2>&1 ||
    { echo "$name: kiln train failed:"; tail -5 "$out/$name.train"; failed=1; continue; }
  rm -rf "$work/run-$name"
  measured=$(sed -n 's/.*peak memory per rank (MiB, resident)://p' "$out/$name.train" | tr ' ' '\n' | sort -n | tail -1)
  [ -n "$est" ] && [ -n "$measured" ] || { echo "$name: no estimate or no measured peak"; failed=1; continue; }
  verdict=$(awk -v e="$est" -v m="$measured" -v t="$tol" 'BEGIN { r = e / m; printf "%.3f %s", r, (r >= 1 - t && r <= 1 + t) ? "ok" : "OFF" }')
  printf '%-24s %5s %13s %13s %7s  %s\n' "$name" "$np" "$est" "$measured" ${verdict} | tee -a "$out/table.txt"
  [ "${verdict#* }" = ok ] || failed=1
done
echo "$(( $(date +%s) - started )) s for ${#selected[@]} cases"
[ $failed = 0 ] && echo "every estimate within ${tol} of the measured peak" || echo "some estimates are off by more than ${tol} (or a case failed)"
exit $failed
