#!/usr/bin/env bash
# Layers point one way (README, "Layout"): base/ includes nothing of kiln's but base/; data/,
# models/ and parallel/ never include trainer/; parallel/ knows the unit chain, not the Llama
# classes. A kiln header included against these rules fails here, naming the file and line.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
bad=0
# $1: folder, $2: extended regex of forbidden "kiln/paths" in #include lines, $3: the rule.
forbid() {
  local hits
  hits=$(grep -nE "^[[:space:]]*#[[:space:]]*include[[:space:]]+\"($2)" "$1"/*.h "$1"/*.cpp "$1"/*/*.h \
    "$1"/*/*.cpp "$1"/*/*.cu "$1"/*.cu 2>/dev/null || true)
  if [ -n "$hits" ]; then
    echo "$hits" | sed "s|$| ($3)|"
    bad=1
  fi
}
forbid base '(trainer|data|models|parallel)/' "base/ includes only base/"
for d in data models parallel; do forbid "$d" 'trainer/' "$d/ never includes trainer/"; done
forbid parallel 'models/(llama|hf|lora|nf4|peft|projection)\.h' "parallel/ knows models/unit_chain.h, not the model classes"
forbid data '(models|parallel)/' "data/ needs neither models/ nor parallel/"
[ "$bad" = 0 ] || { echo "FAIL: include rules broken (above)" >&2; exit 1; }
echo "layers: ok"
