#!/usr/bin/env bash
# The whole test suite: set up if needed, then unit tests (one gtest binary), multi-rank tests
# under mpirun, and end-to-end CLI tests. Last line: "kiln: N passed, M failed".
#   ./scripts/test.sh            KILN_TEST_FILTER=Config.* to run some unit tests only
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
./scripts/setup.sh || { echo "kiln: 0 passed, 1 failed"; exit 1; }

passed=0
failed=0
report=$(mktemp -d "${TMPDIR:-/tmp}/kiln-test.XXXXXX")

echo "== unit tests (build/kiln_tests)"
build/kiln_tests --gtest_color=no --gtest_brief=1 --gtest_filter="${KILN_TEST_FILTER:-*}" \
  --gtest_output="json:$report/unit.json" 2>"$report/unit.stderr"
unit_rc=$?
read -r up uf < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["tests"] - d["failures"] - d.get("disabled", 0), d["failures"])' "$report/unit.json" 2>/dev/null || echo "0 1")
[ "$unit_rc" = 0 ] || [ "$uf" != 0 ] || uf=1
echo "unit: $up passed, $uf failed"
passed=$((passed + up)); failed=$((failed + uf))

if [ -z "${KILN_TEST_FILTER:-}" ]; then
  echo "== multi-rank tests (mpirun)"
  out=$(scripts/test-parallel.sh 2>&1); echo "$out"
  read -r pp pf < <(echo "$out" | sed -n 's/^parallel: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' | tail -1)
  passed=$((passed + ${pp:-0})); failed=$((failed + ${pf:-1}))

  echo "== end-to-end tests (tests/e2e)"
  for t in tests/e2e/test_*.sh; do
    if bash "$t" >"$report/$(basename "$t").log" 2>&1; then
      echo "PASS $t"; passed=$((passed + 1))
    else
      echo "FAIL $t"; tail -30 "$report/$(basename "$t").log"; failed=$((failed + 1))
    fi
  done
fi
echo "logs: $report"
echo "kiln: $passed passed, $failed failed"
[ "$failed" = 0 ]
