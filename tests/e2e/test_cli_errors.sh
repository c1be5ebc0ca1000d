#!/usr/bin/env bash
# Bad input at the command line: one line naming the file:line or key, exit code 2, no crash.
source "$(dirname "$0")/lib.sh"
make_tiny
expect_error() {  # expected-substring command...
  local want=$1; shift
  set +e; out=$("$@" 2>&1); rc=$?; set -e
  [ "$rc" = 2 ] || die "'$*' exited $rc, expected 2: $out"
  [ "$(echo "$out" | wc -l)" = 1 ] || die "'$*' printed more than one line: $out"
  echo "$out" | grep -qF -- "$want" || die "'$*' said '$out', expected '$want'"
  echo "ok: $out"
}
printf 'train:\n  steps: 3\n  lerning_rate: 0.1\n' >"$WORK/typo.yaml"
expect_error "typo.yaml:3: train.lerning_rate: unknown key; did you mean 'train.lr'?" "$KILN" train "$WORK/typo.yaml"
expect_error "train.steps: expected an integer, got 'ten'" "$KILN" plan "$WORK/tiny.yaml" --set train.steps=ten
expect_error "parallel.zero: 7 is out of range; valid: 0 .. 3" "$KILN" plan "$WORK/tiny.yaml" --set parallel.zero=7
expect_error "nope.yaml: cannot read config file" "$KILN" train "$WORK/nope.yaml"
expect_error "KILN_CPU_KERNELS=fast: valid values are kiln" env KILN_CPU_KERNELS=fast "$KILN" plan "$WORK/tiny.yaml"
expect_error "unknown option --stepz" "$KILN" train "$WORK/tiny.yaml" --stepz 3
expect_error "model.num_layers (2) must be divisible by parallel.pp x parallel.virtual_stages (4)" \
  "$KILN" plan "$WORK/tiny.yaml" --set parallel.pp=4 --world 4
set +e; "$KILN" frobnicate >/dev/null 2>&1; rc=$?; set -e
[ "$rc" = 2 ] || die "unknown verb exited $rc"
explain=$("$KILN" plan --explain)
echo "$explain" | grep -q "^train.lr  *0.0003 " || die "plan --explain lacks train.lr: $explain"
plan=$("$KILN" plan "$WORK/tiny.yaml")
echo "$plan" | grep -q "^parameters: " || die "plan prints no parameter count: $plan"
for v in train eval plan generate export prep tokenizer; do "$KILN" $v --help >/dev/null || die "$v --help"; done
"$KILN" tokenizer train --help | grep -q "usage: kiln tokenizer train" || die "tokenizer train --help"
echo "cli errors: ok"
# The key reference in docs/ is what the binary says.
diff <("$KILN" plan --explain) "$ROOT/docs/config-keys.txt" >/dev/null || die "docs/config-keys.txt is stale: build/kiln plan --explain > docs/config-keys.txt"
