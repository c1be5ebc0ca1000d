#!/usr/bin/env bash
# kiln's CPU kernels (OpenBLAS products, the attention kernel, fused RMSNorm/RoPE/SwiGLU) against
# LibTorch's ops end to end: the same tiny runs, dense and packed SFT, with the default and with
# KILN_CPU_KERNELS=aten give the same losses within 1e-5, and the run log says which ran.
source "$(dirname "$0")/lib.sh"
make_tiny
sed -i 's/threads: 1}/threads: 2}/' "$WORK/tiny.yaml"
run() {  # name kernels extra-args...
  local name=$1 kernels=$2; shift 2
  KILN_CPU_KERNELS=$kernels "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/$name-$kernels" \
    --set train.steps=6 "$@" >"$WORK/$name-$kernels.log" 2>&1 || die "$name ($kernels): $(tail -3 "$WORK/$name-$kernels.log")"
  losses "$WORK/$name-$kernels" >"$WORK/$name-$kernels.losses"
}
for kernels in kiln aten; do
  run dense $kernels
  run packed $kernels --set data.mixture="$WORK/sft_firefly.jsonl" --set data.format=firefly --set data.packing=true \
    --set data.seq_len=64
done
grep -q "attention and fused ops: kiln" "$WORK/dense-kiln.log" || die "no 'cpu:' line naming kiln's kernels: $(head -8 "$WORK/dense-kiln.log")"
grep -q "attention and fused ops: aten" "$WORK/dense-aten.log" || die "KILN_CPU_KERNELS=aten is not in the log"
close "$WORK/dense-kiln.losses" "$WORK/dense-aten.losses" 1e-5
close "$WORK/packed-kiln.losses" "$WORK/packed-aten.losses" 1e-5
# The runs are not trivially equal: the loss moved.
python3 -c 'import sys; l=[float(x) for x in open(sys.argv[1])]; assert abs(l[0]-l[-1]) > 1e-3, l' "$WORK/packed-kiln.losses" \
  || die "the packed run's loss did not move"
echo "cpu kernels: ok"
