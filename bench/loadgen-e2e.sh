#!/usr/bin/env bash
# The dispatcher driven by imc-loadgen instead of wrk + nginx: imc-dispatcher --workers 1 on core
# 0; imc-loadgen send (64 connections, 1 KiB binary events) and N imc-loadgen sinks on core 1.
# On this rig wrk and the nginx sinks saturate core 1 before the dispatcher saturates core 0;
# imc-loadgen costs less per request, so this run shows more of what the dispatcher can do.
# Every sink checks that each event it accepted arrived once and that it got every answered one.
#
#   bench/loadgen-e2e.sh [-r REPS] [-d DUR] [-b BEFORE_BIN] [-- extra imc-dispatcher flags]
#
# -b BIN: also measure another imc-dispatcher build (label "before"), interleaved.
#
# Prints, per N: events/s, p99, dispatcher CPU µs per event, peak RSS (medians of REPS).
# Traffic stays on 127.0.0.1; every run is bounded by DUR. Raw rows: target/bench-results/loadgen-e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/rig-tools.sh
REPS=3
DUR=10s
BEFORE=""
while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS=$2; shift 2;;
    -d) DUR=$2; shift 2;;
    -b) BEFORE=$(realpath "$2"); shift 2;;
    --) shift; break;;
    *) echo "usage: bench/loadgen-e2e.sh [-r REPS] [-d DUR] [-b BEFORE_BIN] [-- dispatcher flags]" >&2; exit 2;;
  esac
done
cargo build --release -q -p imc-dispatcher -p imc-loadgen
BIN=${CARGO_TARGET_DIR:-target}/release
OUT=$PWD/target/bench-results/loadgen-e2e
rm -rf "$OUT"; mkdir -p "$OUT"
PORT=18090
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

printf "label\tn\trep\trps\tp99_ms\tdisp_cpu_s\tdisp_hwm_kb\trequests\tsent\taccepted\tduplicates\n" > "$OUT/raw.tsv"
builds=("imc=$BIN/imc-dispatcher")
[ -n "$BEFORE" ] && builds=("before=$BEFORE" "${builds[@]}")
for rep in $(seq 1 "$REPS"); do
  for n in 1 4; do
  for build in "${builds[@]}"; do
    label=${build%%=*}; dispatcher=${build#*=}
    channel_file "$OUT/channels.yaml" $(for i in $(seq 1 "$n"); do echo "http://127.0.0.1:$((19000 + i))/"; done)
    for i in $(seq 1 "$n"); do
      taskset -c 1 "$BIN/imc-loadgen" sink --listen "127.0.0.1:$((19000 + i))" 2> "$OUT/sink$i.log" &
      pids+=($!)
    done
    taskset -c 0 "$dispatcher" --channels "$OUT/channels.yaml" --listen "127.0.0.1:$PORT" \
      --metrics-listen 127.0.0.1:0 --workers 1 "$@" 2> "$OUT/dispatcher.log" &
    disp=$!; pids+=($disp)
    wait_ready "$PORT" || true
    # Dispatcher CPU over the measured interval only: sampled after the 2 s warm-up.
    ( sleep 2; awk '{ print $14 + $15 }' "/proc/$disp/stat" > "$OUT/cpu0" ) &
    sampler=$!
    taskset -c 1 "$BIN/imc-loadgen" send "http://127.0.0.1:$PORT/" \
      --host demo-kn-channel.default.svc.cluster.local -c 64 -d "$DUR" --warmup 2s --json -q \
      > "$OUT/send.json" || true
    wait "$sampler"
    cpu1=$(awk '{ print $14 + $15 }' "/proc/$disp/stat")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$disp/status")
    accepted=0; dups=0
    for i in $(seq 1 "$n"); do
      r=$(curl -s "http://127.0.0.1:$((19000 + i))/report")
      accepted=$((accepted + $(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted"])')))
      dups=$((dups + $(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["duplicates"])')))
    done
    python3 - "$OUT/send.json" "$label" "$n" "$rep" "$(cat "$OUT/cpu0")" "$cpu1" "$hwm" "$accepted" "$dups" >> "$OUT/raw.tsv" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
label, n, rep, c0, c1, hwm, acc, dups = sys.argv[2:]
tck = os.sysconf("SC_CLK_TCK")
p99 = dict(r["latency"]["quoted"])["p99"] / 1000
sent = r["ids"]["end"] - r["ids"]["start"]  # warm-up included: what the sinks must have got
print(f"{label}\t{n}\t{rep}\t{r['rps']:.0f}\t{p99:.2f}\t{(int(c1) - int(c0)) / tck:.2f}\t{hwm}\t{r['requests']}\t{sent}\t{acc}\t{dups}")
PY
    tail -1 "$OUT/raw.tsv"
    cleanup
  done
  done
done

python3 - "$OUT/raw.tsv" "$DUR" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
print(f"{'label':7} {'N':>2} {'events/s':>9} {'deliveries/s':>12} {'p99 ms':>7} {'cpu us/event':>12} {'rss MiB':>7} {'sinks: accepted/sent, dups':>32}")
for label, n in sorted({(r[0], r[1]) for r in rows}, key=lambda k: (int(k[1]), k[0] != "before")):
    g = [r[1:] for r in rows if (r[0], r[1]) == (label, n)]
    med = lambda i: statistics.median(float(r[i]) for r in g)
    # CPU per event: the dispatcher's CPU over the measured interval / events answered in it.
    cpu = statistics.median(float(r[4]) * 1e6 / float(r[6]) for r in g)
    # Every sink must have accepted every event sent (the warm-up's included) exactly once.
    acc = sum(int(r[8]) for r in g); exp = sum(int(r[7]) * int(n) for r in g)
    dups = sum(int(r[9]) for r in g)
    print(f"{label:7} {n:>2} {med(2):>9.0f} {med(2) * int(n):>12.0f} {med(3):>7.2f} {cpu:>12.1f} {med(5) / 1024:>7.1f} "
          f"{f'{acc}/{exp}, {dups} dups':>32}")
PY
