#!/usr/bin/env bash
# `kiln plan CONFIG --world N` refuses exactly what `kiln train` refuses at N processes, with the
# same message (issue 7, "one validator"): a table of refusals, each run through both verbs (train
# under mpirun -np N when N > 1), plus one layout both accept. Every refusal site of the shared
# validator (validate_layout and validate_run in trainer/validate.cpp) must have a row here, so a new
# refusal without a row fails this test.
source "$(dirname "$0")/lib.sh"
make_tiny
cat >"$WORK/refusals.txt" <<'ROWS'
1|parallel.tp=2|parallel.tp (2) x parallel.pp (1) must divide the number of processes (1)
3|parallel.tp=3|parallel.tp (3) must divide model.num_heads (4) and either divide model.num_kv_heads (2) or be a multiple of it; valid tp: 1, 2, 4
2|parallel.tp=2;model.num_heads=6;model.num_kv_heads=3;model.hidden_size=48|parallel.tp (2) must divide model.num_heads (6) and either divide model.num_kv_heads (3) or be a multiple of it; valid tp: 1, 3, 6
2|parallel.pp=2;model.num_layers=3|model.num_layers (3) must be divisible by parallel.pp x parallel.virtual_stages (2)
2|train.global_batch_size=6|train.global_batch_size (6) must be a multiple of train.micro_batch_size (2) x data-parallel size (2)
2|parallel.pp=2|parallel.pp > 1: pipeline parallelism is not in this build yet; valid: pp: 1
1|parallel.sequence_parallel=true|parallel.sequence_parallel: true needs tensor parallelism; valid: false, or parallel.tp > 1
2|parallel.tp=2;parallel.sequence_parallel=true;data.seq_len=33|parallel.sequence_parallel: data.seq_len (33) must be a multiple of parallel.tp (2)
2|parallel.tp=2;train.trainable=[model.norm.weight]|train.trainable / train.trainable_new_rows_only: frozen tensors are not sharded over tensor parallel yet
2|parallel.tp=2;lora.rank=4;lora.quantize_base=nf4|lora.quantize_base: nf4 (QLoRA): the NF4 base is not split over tensor parallel; valid with parallel.tp > 1: lora.quantize_base: none
1|lora.rank=4;lora.targets=[lm_head]|lora.targets: 'lm_head' is not a projection kiln adapts
1|lora.quantize_base=nf4|lora.quantize_base / lora.init_from need adapters: set lora.rank > 0
1|lora.rank=4;train.trainable=[lm_head]|train.trainable: a LoRA run (lora.rank > 0) trains its adapters only
1|train.eval_every=2;data.eval=|train.eval_every: 2 needs data.eval
1|parallel.backend=nccl;train.device=cpu|parallel.backend: nccl
1|data.mixture=|data.mixture: required
1|data.mix=telechat;data.schedule=[{step: 0, weights: {pretrain.jsonl: 1}}]|data.schedule: with data.mix: telechat the pool is drawn once
1|data.template=nonesuch|data.template: unknown template "nonesuch"
1|train.lerning_rate=0.1|--set train.lerning_rate: unknown key
1|parallel.zero=7|parallel.zero: 7 is out of range; valid: 0 .. 3
1|model.vocab_size=500|tok.model: 700 pieces, more than model.vocab_size 500
3|train.micro_batch_size=2|train.global_batch_size (8) must be a multiple of train.micro_batch_size (2) x data-parallel size (3)
ROWS

# The validator's refusal sites: user_error calls in validate_layout and validate_run (the
# chat_template() call counts as one: its unknown-name refusal has a row).
sites=$(awk '/^void validate_layout\(/,/^}/ {print} /^void validate_run\(/,/^}/ {print}' "$ROOT/trainer/validate.cpp" |
  grep -cE 'user_error\(|chat_template\(|check_tokenizer_fits\(')
# The NCCL refusal is two sites (built with or without NCCL) behind one row.
rows=$(($(wc -l <"$WORK/refusals.txt") - 2))  # the two parse-error rows are not validator sites
[ "$rows" -ge "$((sites - 1))" ] || die "the validator has $sites refusal sites but the table only $rows rows: add a row for each new refusal"

# The error text of a verb's refusal: exit 2 and the text after "error: " (rank prefixes dropped).
refusal() {  # world out-file verb args...
  local world=$1 out=$2; shift 2
  set +e
  if [ "$world" -gt 1 ] && [ "$1" = train ]; then
    timeout 120 mpirun --oversubscribe -np "$world" "$KILN" "$@" >"$out" 2>&1 </dev/null
  else
    timeout 120 "$KILN" "$@" >"$out" 2>&1 </dev/null
  fi
  local rc=$?
  set -e
  echo "$rc"
}
n=0
while IFS='|' read -r world sets want; do
  args=()
  IFS=';' read -r -a list <<<"$sets"  # the --set overrides of a row, separated by ';'
  for s in "${list[@]}"; do args+=(--set "$s"); done
  rc_plan=$(refusal "$world" "$WORK/plan.out" plan "$WORK/tiny.yaml" --world "$world" "${args[@]}")
  rc_train=$(refusal "$world" "$WORK/train.out" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/run-$n" \
    --set train.steps=1 "${args[@]}")
  [ "$rc_plan" = 2 ] || die "plan --world $world with [$sets] exited $rc_plan, expected 2: $(cat "$WORK/plan.out")"
  [ "$rc_train" = 2 ] || die "train at $world with [$sets] exited $rc_train, expected 2: $(tail -3 "$WORK/train.out")"
  p=$(grep -m1 ' error: ' "$WORK/plan.out" | sed 's/.* error: //')
  t=$(grep -m1 ' error: ' "$WORK/train.out" | sed 's/.* error: //')
  [ -n "$p" ] && [ "$p" = "$t" ] || die "[$sets] at $world: plan said '$p', train said '$t'"
  case "$p" in *"$want"*) ;; *) die "[$sets] at $world: '$p' does not say '$want'";; esac
  echo "ok $world [$sets]: $p"
  n=$((n + 1))
done <"$WORK/refusals.txt"

# A layout both accept: plan exits 0, train runs its step.
"$KILN" plan "$WORK/tiny.yaml" --world 2 --set parallel.zero=3 >/dev/null || die "plan refused dp 2 ZeRO-3"
timeout 300 mpirun --oversubscribe -np 2 "$KILN" train "$WORK/tiny.yaml" --set parallel.zero=3 --set train.steps=1 \
  --set train.run_dir="$WORK/run-ok" >"$WORK/ok.log" 2>&1 || { tail -5 "$WORK/ok.log"; die "train refused what plan accepted"; }
# Tensor parallel (with sequence parallel) is accepted by both too.
"$KILN" plan "$WORK/tiny.yaml" --world 2 --set parallel.tp=2 --set parallel.sequence_parallel=true >/dev/null ||
  die "plan refused tp 2 with sequence parallel"
timeout 300 mpirun --oversubscribe -np 2 "$KILN" train "$WORK/tiny.yaml" --set parallel.tp=2 --set train.steps=1 \
  --set parallel.sequence_parallel=true --set train.run_dir="$WORK/run-tp" >"$WORK/tp.log" 2>&1 ||
  { tail -5 "$WORK/tp.log"; die "train refused tp 2 that plan accepted"; }
echo "plan refusals: $n rows agree with train"
