#!/usr/bin/env bash
# The worked example: set up if needed, pretrain the tiny Llama on the bundled corpus and show the
# loss falling, then evaluate it and let it continue a prompt. Runs on a 2-core CPU.
#   ./scripts/demo.sh            (KILN_DEMO_STEPS=N to shorten or lengthen the run)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
./scripts/setup.sh
cfg=configs/examples/tiny-pretrain.yaml
steps=${KILN_DEMO_STEPS:-300}
echo
echo "== kiln train $cfg (steps: $steps)"
build/kiln train "$cfg" --set train.steps="$steps"
echo
echo "== loss over training (metrics.jsonl)"
python3 - runs/tiny-pretrain/metrics.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows[:: max(1, len(rows) // 10)] + [rows[-1]]:
    bar = "#" * int(r["loss"] * 6)
    print(f"step {r['step']:4d}  loss {r['loss']:.3f}  {bar}")
print(f"first loss {rows[0]['loss']:.3f} -> last loss {rows[-1]['loss']:.3f}")
PY
echo
echo "== kiln eval $cfg"
build/kiln eval "$cfg"
echo
echo "== kiln generate $cfg --prompt '床前明月光，'"
build/kiln generate "$cfg" --prompt "床前明月光，" --set generate.max_new_tokens=40
echo "== kiln generate $cfg --prompt 'The best way to'"
build/kiln generate "$cfg" --prompt "The best way to" --set generate.max_new_tokens=40
