#!/usr/bin/env bash
# Coverage-guided fuzzing of the dispatcher's parsers (the targets are in fuzz/harness, their
# libFuzzer binaries in fuzz/). Installs cargo-fuzz when missing, builds every target, runs each
# for SECONDS_PER_TARGET (default 60), prints executions, exec/s and findings per target, and exits
# non-zero on any crash, timeout, leak or out-of-memory. Not part of CI (too slow): CI replays the
# committed corpus and regressions with `cargo test -p imc-fuzz` instead.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Environment:
#   FUZZ_KEEP_GOING=1   go on after a finding (libFuzzer's fork mode) to collect several per run.
#   FUZZ_SANITIZER=...  cargo fuzz's sanitizer: address (default, with leak detection) or none.
#   FUZZ_RUNS=N         stop each target after N executions (SECONDS_PER_TARGET stays the cap),
#                       e.g. FUZZ_RUNS=10000000 scripts/fuzz.sh 3600.
#   CARGO_TARGET_DIR    where builds go (default: target/ of the repository). libFuzzer's grown
#                       corpus, artifacts and logs go to $CARGO_TARGET_DIR/fuzz/<target>/, never
#                       into fuzz/corpus/ (which holds only the committed seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  secs=$1
  shift
fi
all=(request_framing response cloudevent_binary cloudevent_structured manifest durations chunked_differential)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (have: ${all[*]})" >&2; exit 2; }
done

# The longest input per target: room for every limit the harness scales down (1 KiB heads and
# bodies, the 1024-byte chunk line) and no more, since longer inputs only slow the search.
max_len() {
  case $1 in
    durations) echo 128 ;;
    manifest) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

# cargo fuzz passes nightly-only flags (-Zsanitizer, the sancov passes); RUSTC_BOOTSTRAP=1 makes
# a stable rustc accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
sanitizer=${FUZZ_SANITIZER:-address}
triple=$(rustc -vV | sed -n 's/^host: //p')
# Debug assertions include overflow checks: an arithmetic overflow in a parser is a finding.
echo "--- building the fuzz targets (sanitizer: $sanitizer, debug assertions)"
cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer" --debug-assertions
bindir=$CARGO_TARGET_DIR/$triple/release

extra=()
if [ -n "${FUZZ_RUNS:-}" ]; then
  extra+=(-runs="$FUZZ_RUNS")
fi
if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
  extra+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
fi

status=0
report=()
for t in "${targets[@]}"; do
  work=$CARGO_TARGET_DIR/fuzz/$t
  rm -rf "$work/artifacts"
  mkdir -p "$work/corpus" "$work/artifacts"
  # The grown corpus first (libFuzzer writes new inputs there), the seeds after it (read only).
  # Not fuzz/regressions: inputs of open findings would stop the run at once; cargo test replays
  # them.
  dirs=("$work/corpus" "$root/fuzz/corpus/$t")
  echo "--- $t: ${secs}s, -max_len=$(max_len "$t") (log: $work/log)"
  set +e
  (cd "$work" && "$bindir/$t" -max_total_time="$secs" -max_len="$(max_len "$t")" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    "${extra[@]}" "${dirs[@]}") >"$work/log" 2>&1
  rc=$?
  set -e
  # Plain runs end with libFuzzer's final stats; fork mode only with progress lines (`#N: ...`),
  # whose total over the run's time gives the rate (restarts after findings included).
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1)
  if [ -z "$execs" ]; then
    execs=$(sed -n 's/^#\([0-9]*\): .*/\1/p' "$work/log" | tail -1)
    [ -n "$execs" ] && rate=$((execs / secs))
  fi
  count() { find "$work/artifacts" -maxdepth 1 -name "$1-*" | wc -l; }
  crashes=$(count crash) timeouts=$(count timeout) leaks=$(count leak) ooms=$(count oom)
  report+=("$(printf '%-22s %12s %8s %8s %9s %6s %5s %4s' "$t" "${execs:-?}" "${rate:-?}" \
    "$crashes" "$timeouts" "$leaks" "$ooms" "$rc")")
  if [ "$rc" != 0 ] || [ $((crashes + timeouts + leaks + ooms)) -gt 0 ]; then
    status=1
    grep -m1 -A4 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|ERROR: LeakSanitizer" "$work/log" || true
    echo "    findings: $work/artifacts/ (minimize: cargo fuzz tmin --fuzz-dir fuzz $t <file>)"
  fi
done

echo
printf '%-22s %12s %8s %8s %9s %6s %5s %4s\n' target executions exec/s crashes timeouts leaks ooms rc
printf '%s\n' "${report[@]}"
exit $status
