#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz, libFuzzer, nightly) and runs each for SECONDS.
#
#   runtime/fuzz/run.sh SECONDS [TARGET...]     (no TARGET: every target)
#
# Prints, per target, the CPU seconds it ran, the executions, and whether it crashed; exits
# non-zero if any target crashed (the input is kept in <target dir>/fuzz/artifacts/: replay it
# with `<binary> <file>`, then make it a regression test next to the code that crashed).
#
# Build output, cargo-fuzz itself and the growing corpora live under $CARGO_TARGET_DIR (or
# ./target), so a warm CI cache keeps them; the committed seeds are in runtime/fuzz/seeds/.
set -euo pipefail

FUZZ="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$FUZZ/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOOLS="$TARGET_DIR/fuzz-tools"
OUT="$TARGET_DIR/fuzz"
CARGO_FUZZ_VERSION=0.13.2

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
fi
SECONDS_EACH="$1"
shift
ALL=(tracker thrift enriched_json filter_path config guest_output)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

# libFuzzer needs a nightly Rust (-Zsanitizer=... coverage instrumentation); only this build
# uses it, everything else stays on the default toolchain.
if ! command -v rustup >/dev/null 2>&1 || ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: the fuzz targets need a nightly Rust toolchain, and there is none." >&2
  echo "             Install it with: rustup toolchain install nightly --profile minimal" >&2
  echo "             (runtime/tests/setup.sh does this; it needs rustup on PATH)" >&2
  exit 1
fi
if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION$"; then
  echo "fuzz/run.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"

# Release with debug assertions and overflow checks; no sanitizer: the fuzzed code is safe Rust,
# where ASan finds nothing more and halves the executions. FUZZ_SANITIZER=address to turn it on.
SANITIZER="${FUZZ_SANITIZER:-none}"
(cd "$ROOT/runtime" && cargo +nightly fuzz build --fuzz-dir "$FUZZ" -s "$SANITIZER" --debug-assertions \
  --target-dir "$OUT")
HOST="$(rustup run nightly rustc -vV | sed -n 's/^host: //p')"
BIN="$OUT/$HOST/release"

# Longest input per target: enough for a tracker POST of a few events or a whole config.
max_len() {
  case "$1" in
    guest_output) echo 2048 ;;
    filter_path) echo 4096 ;;
    *) echo 16384 ;;
  esac
}

# Seconds of CPU (user + system) used so far by this shell's finished children, into $CPU.
# `times` must run in this very shell (a subshell has children of its own), hence the file.
child_cpu() {
  times >"$OUT/times.$$"
  CPU=$(awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$OUT/times.$$")
}

mkdir -p "$OUT/artifacts" "$OUT/scratch"
trap 'rm -f "$OUT/times.$$"' EXIT
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  [ -x "$BIN/$t" ] || { echo "fuzz/run.sh: no target $t (have: ${ALL[*]})" >&2; exit 2; }
  corpus="$OUT/corpus/$t"
  mkdir -p "$corpus"
  log="$OUT/$t.log"
  # CPU time of this target alone: the children's user+system time before and after.
  child_cpu
  cpu0=$CPU
  set +e
  # In a scratch directory: a config the fuzzer writes may name relative paths.
  (cd "$OUT/scratch" && "$BIN/$t" "$corpus" "$FUZZ/seeds/$t" \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len="$(max_len "$t")" -timeout=10 \
    -artifact_prefix="$OUT/artifacts/$t-" -print_final_stats=1 >"$log" 2>&1)
  rc=$?
  set -e
  child_cpu
  cpu=$(awk -v a="$cpu0" -v b="$CPU" 'BEGIN { printf "%.1f", b - a }')
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    result="no crash"
  else
    result="CRASHED (exit $rc): $(grep -m1 -o "$OUT/artifacts/$t-[^ ]*" "$log" || echo "see $log")"
    failed=1
    tail -40 "$log" >&2
  fi
  summary+=("$(printf '%-14s %8s CPU s %12s execs  %s' "$t" "$cpu" "${execs:-?}" "$result")")
done

echo "fuzz: $SECONDS_EACH s per target (logs in $OUT/<target>.log)"
printf '%s\n' "${summary[@]}"
exit "$failed"
