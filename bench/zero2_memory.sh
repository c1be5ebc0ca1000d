#!/usr/bin/env bash
# Benchmark (not a test): the gradient bytes a rank holds at once under ZeRO-1 and ZeRO-2, as
# `kiln train` measures them (ZeroOptimizer::peak_gradient_bytes, from the live gradient tensors;
# the "peak gradient bytes per rank (measured)" line at the end of a run), at dp 2 and 4 with
# accumulation. The model: the e2e tokenizer and data (tests/e2e/lib.sh make_tiny) with 8 layers
# of hidden 64, so a layer is about a tenth of the model.
#   bench/zero2_memory.sh        KILN=build/kiln  NP="2 4"
set -euo pipefail
source "$(dirname "$0")/../tests/e2e/lib.sh"
make_tiny
printf '%-4s %-14s %-12s %-12s %-16s %s\n' dp "model grads" "ZeRO-1 (B)" "ZeRO-2 (B)" "ZeRO-2 / ZeRO-1" "ZeRO-2 / model grads (1/dp)"
for np in ${NP:-2 4}; do
  declare -A peak
  for zero in 1 2; do
    log=$WORK/np$np-z$zero.log
    timeout 300 mpirun --oversubscribe -np "$np" "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/np$np-z$zero" \
      --set model.num_layers=8 --set model.hidden_size=64 --set train.steps=2 --set train.micro_batch_size=1 \
      --set parallel.zero=$zero >"$log" 2>&1 || { tail -20 "$log"; die "np $np zero $zero"; }
    # Rank 0's figure (every rank holds the same).
    peak[$zero]=$(grep -o 'peak gradient bytes per rank (measured): [0-9]*' "$log" | grep -o '[0-9]*$')
  done
  params=$(grep -o 'model: [0-9]* parameters' "$log" | grep -o '[0-9]*')
  grads=$((params * 4))  # every parameter trained, fp32
  printf '%-4s %-14s %-12s %-12s %-16.3f %.3f (%.3f)\n' "$np" "$grads" "${peak[1]}" "${peak[2]}" \
    "$(echo "${peak[2]} / ${peak[1]}" | bc -l)" "$(echo "${peak[2]} / $grads" | bc -l)" "$(echo "1 / $np" | bc -l)"
done
