#!/usr/bin/env bash
# Verified resume (issue 7): each kind of damage to the newest checkpoint is detected, a warning
# names the file, and training resumes from the previous checkpoint with the uninterrupted run's
# losses; with no usable checkpoint left, `kiln train` exits 2 and writes nothing over the run
# directory. `kiln verify` and `kiln export` see the same damage.
source "$(dirname "$0")/lib.sh"
make_tiny
py=$(cat "$ROOT/build/python_path" 2>/dev/null || true)
[ -x "$py" ] || py=python3
cfg=(--set train.steps=6 --set checkpoint.every=2 --set checkpoint.keep_last=5)

"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/ref" "${cfg[@]}" >"$WORK/ref.log" 2>&1 || die "reference run"
losses "$WORK/ref" | tail -4 >"$WORK/ref-tail.loss"
# The pristine run dir: checkpoints at steps 2 and 4.
"$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/base" "${cfg[@]}" --exit-after 4 >"$WORK/base.log" 2>&1 \
  || die "base run"
[ -d "$WORK/base/checkpoints/step-00000004" ] && [ -d "$WORK/base/checkpoints/step-00000002" ] || die "no checkpoints"

shard=shard-00000-of-00001.safetensors
# name | what to do to the step-4 checkpoint (in $d) | the file the warning must name
cases=(
  "truncated|truncate -s -100 \$d/step-00000004/$shard|$shard"
  "flipped|$py -c 'import sys; p=sys.argv[1]; b=bytearray(open(p,\"rb\").read()); b[len(b)//2]^=0xff; open(p,\"wb\").write(b)' \$d/step-00000004/$shard|$shard"
  "missing|rm \$d/step-00000004/config.yaml|config.yaml"
  "state-json|echo '{\"step\": 4, \"files\": ' >\$d/step-00000004/state.json|state.json"
  "half-written|rm -rf \$d/step-00000004 && cp -r \$d/step-00000002 \$d/step-00000004.tmp && rm \$d/step-00000004.tmp/state.json|"
  "latest-missing|rm -rf \$d/step-00000004 && echo step-00000006 >\$d/latest|latest"
)
for c in "${cases[@]}"; do
  IFS='|' read -r name action file <<<"$c"
  run=$WORK/case-$name
  cp -r "$WORK/base" "$run"
  d=$run/checkpoints
  eval "$action" || die "$name: could not damage the checkpoint"
  if [ "$name" != half-written ] && [ "$name" != latest-missing ]; then
    "$KILN" verify "$d/step-00000004" >"$run.verify" 2>&1 && { cat "$run.verify"; die "$name: kiln verify passed"; }
    grep -q "$file" "$run.verify" || { cat "$run.verify"; die "$name: kiln verify does not name $file"; }
    rc=0; "$KILN" export "$d/step-00000004" --out "$run-hf" >"$run.export" 2>&1 || rc=$?
    [ $rc = 2 ] || { cat "$run.export"; die "$name: kiln export of a damaged checkpoint did not exit 2"; }
  fi
  "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" "${cfg[@]}" >"$run.log" 2>&1 || { tail -5 "$run.log"; die "$name: no resume"; }
  grep -q "resumed from $d/step-00000002 at step 2" "$run.log" || { tail -20 "$run.log"; die "$name: did not fall back to step 2"; }
  if [ -n "$file" ]; then
    grep -E "warning: .*$file" "$run.log" >/dev/null || { grep warning "$run.log"; die "$name: no warning naming $file"; }
  fi
  losses "$run" | tail -4 >"$run.loss"
  echo -n "$name: "; close "$WORK/ref-tail.loss" "$run.loss" 1e-6 || die "$name: losses after the fallback differ"
done

# Nothing usable: exit 2, and the run directory is left exactly as it was.
run=$WORK/none
cp -r "$WORK/base" "$run"
truncate -s -8 "$run/checkpoints/step-00000004/$shard"
truncate -s -8 "$run/checkpoints/step-00000002/$shard"
before=$(cd "$run" && find . -type f -exec md5sum {} + | sort)
rc=0; "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$run" "${cfg[@]}" >"$run.log" 2>&1 || rc=$?
[ $rc = 2 ] || { tail -5 "$run.log"; die "no usable checkpoint: exit $rc, want 2"; }
grep -q "no usable checkpoint" "$run.log" || { tail -3 "$run.log"; die "no usable checkpoint: no such line"; }
after=$(cd "$run" && find . -type f -exec md5sum {} + | sort)
[ "$before" = "$after" ] || die "no usable checkpoint: the run directory was changed"
echo "no usable checkpoint: exit 2, run directory untouched"
echo PASS
