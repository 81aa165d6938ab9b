#!/usr/bin/env bash
# End-to-end benchmark: the nginx ceiling and imc-dispatcher (one worker on core 0) at N=1 and
# N=4 subscribers, 64 and 8 connections, with ../shared/bench/rig.sh, in one run; then one table
# with each row's requests/s as a ratio of the ceiling at the same connection count.
#
#   bench/e2e.sh [-r REPS] [-d DUR] [-b BEFORE_BIN] [--scaling] [-- extra imc-dispatcher flags]
#
# -b BIN      also measure another imc-dispatcher build (label "before"), interleaved with this
#             one, for a before/after table from one run.
# --scaling   also measure 2 workers on both cores, sharing them with wrk and the sinks (label
#             "imc-2w"): what one machine does when nothing is pinned apart.
# Repetitions are interleaved (ceiling, before, after, then again), so drift hits every row alike.
#
# Needs nginx-light and wrk (installed with apt-get if missing). Traffic stays on 127.0.0.1 and
# every load run is bounded by the rig's duration. Results: target/bench-results/e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3
DUR=10s
BEFORE=""
SCALING=0
while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS=$2; shift 2;;
    -d) DUR=$2; shift 2;;
    -b) BEFORE=$(realpath "$2"); shift 2;;
    --scaling) SCALING=1; shift;;
    --) shift; break;;
    *) echo "usage: bench/e2e.sh [-r REPS] [-d DUR] [-b BEFORE_BIN] [--scaling] [-- dispatcher flags]" >&2; exit 2;;
  esac
done
RIG=../shared/bench/rig.sh
. bench/rig-tools.sh
need_rig rig.sh
cargo build --release -p imc-dispatcher
export BENCH_RESULTS=$PWD/target/bench-results/e2e
rm -rf "$BENCH_RESULTS"; mkdir -p "$BENCH_RESULTS"
BIN=${CARGO_TARGET_DIR:-target}/release/imc-dispatcher
FLAGS=(--channels {CHANNELS} --listen 127.0.0.1:8080 --metrics-listen 127.0.0.1:0)
for rep in $(seq 1 "$REPS"); do
  "$RIG" --null -r 1 -R "$rep" -d "$DUR"
  for n in 1 4; do
    [ -n "$BEFORE" ] && "$RIG" -l before -n "$n" -r 1 -R "$rep" -d "$DUR" -- "$BEFORE" "${FLAGS[@]}" --workers 1 "$@"
    "$RIG" -l imc -n "$n" -r 1 -R "$rep" -d "$DUR" -- "$BIN" "${FLAGS[@]}" --workers 1 "$@"
    if [ "$SCALING" = 1 ]; then
      DISP_CPUS=0,1 WRK_CPUS=0,1 SINK_CPUS=0,1 \
        "$RIG" -l imc-2w -n "$n" -r 1 -R "$rep" -d "$DUR" -- "$BIN" "${FLAGS[@]}" --workers 2 "$@"
    fi
  done
done
python3 ../shared/bench/benchlib.py summarize "$BENCH_RESULTS/raw.tsv" > "$BENCH_RESULTS/summary.tsv"
python3 - "$BENCH_RESULTS/summary.tsv" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
head, rows = rows[0], rows[1:]
col = {name: i for i, name in enumerate(head)}
ceiling = {r[col["conc"]]: float(r[col["rps"]]) for r in rows if r[col["label"]] == "null"}
before = {(r[col["N"]], r[col["conc"]]): float(r[col["rps"]]) for r in rows if r[col["label"]] == "before"}
order = {"null": 0, "before": 1, "imc": 2, "imc-2w": 3}
rows.sort(key=lambda r: (int(r[col["N"]]), -int(r[col["conc"]]), order.get(r[col["label"]], 9)))
print(f"{'label':8} {'N':>2} {'conc':>4} {'events/s':>9} {'of ceiling':>10} {'vs before':>9} {'deliveries/s':>12} {'p99 ms':>7} {'cpu us/event':>12} {'rss MiB':>7} {'errors':>6}")
for r in rows:
    label, n, conc, rps = r[col["label"]], int(r[col["N"]]), r[col["conc"]], float(r[col["rps"]])
    ratio = rps / ceiling[conc] if conc in ceiling and label != "null" else 1.0
    b = before.get((r[col["N"]], conc))
    vs = f"{rps / b:>9.2f}" if b and label not in ("null", "before") else f"{'':>9}"
    print(f"{label:8} {n:>2} {conc:>4} {rps:>9.0f} {ratio:>10.1%} {vs} {rps * max(n, 1):>12.0f} "
          f"{float(r[col['p99_ms']]):>7.2f} {r[col['cpu_us_per_event']]:>12} {float(r[col['disp_rss_mib']]):>7.1f} {r[col['errors']]:>6}")
PY
