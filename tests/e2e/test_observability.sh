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

# A run killed past its last checkpoint and resumed: its event files show every step once, with
# the resumed run's values (metrics.jsonl is cut back to the checkpoint; TensorBoard purges the
# orphaned steps at the resumed file's SessionLog START).
"$KILN" train "$WORK/tiny.yaml" --set train.steps=5 --set checkpoint.every=2 --set checkpoint.keep_last=5 --set train.run_dir="$WORK/run3" \
  --set train.lr=0.02 >"$WORK/train3.log" 2>&1 || { cat "$WORK/train3.log" >&2; die "train run3"; }
rm -rf "$WORK"/run3/checkpoints/step-00000004 "$WORK"/run3/checkpoints/step-00000005 "$WORK"/run3/checkpoints/latest
sleep 1  # a new event file name (it carries the unix time)
"$KILN" train "$WORK/tiny.yaml" --set train.steps=5 --set checkpoint.every=2 --set checkpoint.keep_last=5 --set train.run_dir="$WORK/run3" \
  >"$WORK/train3b.log" 2>&1 || { cat "$WORK/train3b.log" >&2; die "resume run3"; }
grep -q "resum.*step 2\|step-00000002" "$WORK/train3b.log" || die "run3 did not resume from step 2: $(head -5 "$WORK/train3b.log")"
[ "$(ls "$WORK"/run3/tb/events.out.tfevents.* | wc -l)" = 2 ] || die "run3: expected two event files"
"$py" - "$WORK/run3" <<'PY' || die "resumed run: event files disagree with metrics.jsonl"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea_mod
run = sys.argv[1]
want = [(r["step"], r["lr"]) for r in map(json.loads, open(run + "/metrics.jsonl")) if "lr" in r]
assert [s for s, _ in want] == [1, 2, 3, 4, 5], want
acc = ea_mod.EventAccumulator(run + "/tb", size_guidance={ea_mod.SCALARS: 0})
acc.Reload()
got = [(e.step, e.value) for e in acc.Scalars("lr")]
assert [s for s, _ in got] == [1, 2, 3, 4, 5], f"steps {[s for s, _ in got]}"
for (s, a), (_, b) in zip(got, want):
    assert abs(a - b) <= 1e-6 * abs(b), (s, a, b)  # steps 3-5 from the resumed run (lr 0.01, not 0.02)
print("resumed run: each step once in TensorBoard, with the resumed run's values")
PY

"$KILN" train "$WORK/tiny.yaml" --set train.steps=1 --set train.run_dir="$WORK/run2" \
  --set train.tensorboard=none >/dev/null 2>&1 || die "train with tensorboard: none"
[ ! -e "$WORK/run2/tb" ] || die "train.tensorboard: none still wrote $WORK/run2/tb"
echo "observability: tensorboard = metrics.jsonl, data.json order, plan table and units, empty config"
