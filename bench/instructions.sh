#!/usr/bin/env bash
# User-space instructions per event of the dispatcher, counted by callgrind: the figure that does
# not move with this shared VM's speed, for the user-space steps of issue 14 (clock readings,
# future sizes) whose wall-clock gains are within the CPU figures' noise.
#
#   bench/instructions.sh [-n "1 4"] [-b "before=DIR after=DIR"] [-e "2000 12000"]
#
# For each build (LABEL=DIR holding imc-dispatcher; default: this tree's release build) and each
# fan-out N: imc-dispatcher --workers 1 --io-driver epoll (valgrind does not run io_uring rings)
# under `valgrind --tool=callgrind`, an `imc-loadgen sink` as its N subscribers, and
# `imc-loadgen send -c 8 -n E` of 1 KiB binary events; the dispatcher is stopped with SIGTERM and
# its total instruction count (Ir) read. Two event counts E1 < E2 give
# (Ir(E2) - Ir(E1)) / (E2 - E1): the start-up and the shutdown cancel out. Kernel instructions
# are not counted (that is most of an event's CPU: see bench/exchange.sh). Traffic stays on
# 127.0.0.1; each run ends when its events are sent.
set -euo pipefail
cd "$(dirname "$0")/.."
FANOUT="1 4"
BUILDS=""
EVENTS="2000 12000"
while [ $# -gt 0 ]; do
  case "$1" in
    -n) FANOUT=$2; shift 2;;
    -b) BUILDS=$2; shift 2;;
    -e) EVENTS=$2; shift 2;;
    *) echo "usage: bench/instructions.sh [-n \"1 4\"] [-b \"LABEL=DIR ...\"] [-e \"E1 E2\"]" >&2; exit 2;;
  esac
done
. bench/rig-tools.sh
command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null; }
cargo build --release -q -p imc-dispatcher -p imc-loadgen
BIN=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
[ -n "$BUILDS" ] || BUILDS="this=$BIN"
read -r E1 E2 <<< "$EVENTS"
OUT=$PWD/target/bench-results/instructions
rm -rf "$OUT"; mkdir -p "$OUT"
PORT=18290
SUB=19290
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

ir_of() { # build n events -> total Ir of the dispatcher process
  local dir=$1 n=$2 events=$3 f="$OUT/cg.out"
  rm -f "$f"
  valgrind --tool=callgrind --callgrind-out-file="$f" "$dir/imc-dispatcher" \
    --channels "$OUT/channels-n$n.yaml" --listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 \
    --workers 1 --io-driver epoll 2> "$OUT/server.log" &
  local d=$!
  pids+=($d)
  wait_ready "$PORT" 600 || { echo "instructions.sh: the dispatcher under callgrind never got ready" >&2; cat "$OUT/server.log" >&2; exit 1; }
  "$BIN/imc-loadgen" send "http://127.0.0.1:$PORT/" --host demo-kn-channel.default.svc.cluster.local \
    -c 8 -n "$events" -q --json > "$OUT/send.json"
  kill -TERM "$d"
  wait "$d" 2>/dev/null || true
  python3 - "$OUT/send.json" "$events" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r["ok"] != int(sys.argv[2]):
    sys.exit(f"instructions.sh: {r['ok']} of {sys.argv[2]} events accepted")
PY
  awk '/^(summary|totals):/ { print $2; exit }' "$f"
}

"$BIN/imc-loadgen" sink --listen "127.0.0.1:$SUB" 2> "$OUT/sub.log" &
pids+=($!)
for n in $FANOUT; do
  channel_file "$OUT/channels-n$n.yaml" $(for i in $(seq 1 "$n"); do echo "http://127.0.0.1:$SUB/s$i"; done)
done
printf "%-8s %3s %16s %16s\n" build N "instr/event" "instr/delivery"
for n in $FANOUT; do
  for build in $BUILDS; do
    label=${build%%=*}; dir=${build#*=}
    a=$(ir_of "$dir" "$n" "$E1"); b=$(ir_of "$dir" "$n" "$E2")
    per=$(( (b - a) / (E2 - E1) ))
    printf "%-8s %3s %16s %16s\n" "$label" "$n" "$per" "$(( per / n ))"
  done
done
