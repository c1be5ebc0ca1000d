#!/usr/bin/env bash
# What a user watches (issue 12): TensorBoard event files that read back, with the tensorboard
# package, as exactly the scalars of metrics.jsonl; sources in data.json order (not sorted) in
# metrics.jsonl and in the start-of-run mixer table; `kiln plan` printing that table and
# parameters in K/M/B; an empty config file refused with one line naming it.
source "$(dirname "$0")/lib.sh"
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
if [ -z "$py" ] || ! "$py" -c "import tensorboard, numpy" 2>/dev/null; then
  echo "no python with tensorboard (build/python_path; scripts/setup.sh installs it): cannot check" >&2
  exit 1
fi
make_tiny
# data.json order opposite to the alphabetical one
printf '{"sft_firefly.jsonl": 1.0, "pretrain.jsonl": 2.0}\n' >"$WORK/data.json"

: >"$WORK/empty.yaml"
out=$("$KILN" plan "$WORK/empty.yaml" 2>&1) && die "an empty config was accepted"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || die "empty config: expected one line, got: $out"
case "$out" in *"$WORK/empty.yaml: empty config file"*) ;; *) die "empty config: $out" ;; esac

plan=$("$KILN" plan "$WORK/tiny.yaml" 2>&1) || die "plan: $plan"
printf '%s\n' "$plan" | grep -Eq '^parameters: +[0-9]+ \([0-9.]+ K\)$' || die "plan: no K units: $(printf '%s\n' "$plan" | grep parameters)"
printf '%s\n' "$plan" | grep -q 'data.mix: proportional' || die "plan prints no mixer table"

"$KILN" train "$WORK/tiny.yaml" --set train.steps=6 --set train.eval_every=3 >"$WORK/train.log" 2>&1 \
  || { cat "$WORK/train.log" >&2; die "train"; }
grep -q 'data.mix: proportional' "$WORK/train.log" || die "train logs no mixer table"
first=$(grep -oE '^ +(sft_firefly|pretrain)\.jsonl' "$WORK/train.log" | head -2 | tr -d ' ' | tr '\n' ' ')
[ "$first" = "sft_firefly.jsonl pretrain.jsonl " ] || die "log lists sources as '$first', not in data.json order"
ls "$WORK"/run/tb/events.out.tfevents.* >/dev/null || die "no event file in RUN_DIR/tb"

"$py" - "$WORK/run" <<'PY' || die "event files differ from metrics.jsonl"
import json, sys
import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea_mod
run = sys.argv[1]
want = {}
order = None
for row in map(json.loads, open(run + "/metrics.jsonl")):
    if "source_tokens" in row and order is None:
        order = list(row["source_tokens"])
    for k, v in row.items():
        if k == "step":
            continue
        if isinstance(v, dict):
            for n, x in v.items():
                want.setdefault(f"{k}/{n}", []).append((row["step"], np.float32(x)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            want.setdefault(k, []).append((row["step"], np.float32(v)))
assert order == ["sft_firefly.jsonl", "pretrain.jsonl"], f"metrics.jsonl source order {order}"
acc = ea_mod.EventAccumulator(run + "/tb", size_guidance={ea_mod.SCALARS: 0})
acc.Reload()
tags = set(acc.Tags()["scalars"])
assert tags == set(want), f"tags {sorted(tags ^ set(want))} differ"
for need in ["loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_bytes", "eval_loss",
             "source_tokens/pretrain.jsonl", "split_pieces"]:
    assert need in tags, need
n = 0
for tag, vals in want.items():
    got = [(e.step, np.float32(e.value)) for e in acc.Scalars(tag)]
    assert got == vals, f"{tag}: {got} != {vals}"
    n += len(vals)
print(f"tensorboard: {len(tags)} tags, {n} scalars equal to metrics.jsonl")
PY

"$KILN" train "$WORK/tiny.yaml" --set train.steps=1 --set train.run_dir="$WORK/run2" \
  --set train.tensorboard=none >/dev/null 2>&1 || die "train with tensorboard: none"
[ ! -e "$WORK/run2/tb" ] || die "train.tensorboard: none still wrote $WORK/run2/tb"
echo "observability: tensorboard = metrics.jsonl, data.json order, plan table and units, empty config"
