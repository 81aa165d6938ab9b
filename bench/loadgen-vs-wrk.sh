#!/usr/bin/env bash
# imc-loadgen send against wrk, in one run, on the rig's null ceiling: one nginx worker answering
# 202 pinned to core 0, the load generator pinned to core 1 (one thread), 1 KiB binary-mode
# CloudEvents, the same Host header and connection counts. Each measurement follows an unrecorded
# warm-up of the same tool; the tools alternate within every repetition. Prints requests/s
# (medians) and imc-loadgen's ratio to wrk; exits 1 if imc-loadgen (io_uring) is below 95% of wrk.
# As in the rig, each measurement waits for a quiet machine (other load below MAX_BUSY, 10%) and is
# redone (up to 4 times) if other processes used more than MAX_FOREIGN (1 s) of CPU during it.
#
#   bench/loadgen-vs-wrk.sh [-r REPS] [-d DUR] [-c "64 8"]
#
# Needs nginx-light and wrk (installed with apt-get if missing). Traffic stays on 127.0.0.1 and
# every run is bounded by DUR. Raw figures: target/bench-results/loadgen-vs-wrk/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3
DUR=10s
CONCS="64 8"
WARM=2s
PORT=${PORT:-18080}
HOST=demo-kn-channel.default.svc.cluster.local
while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS=$2; shift 2;;
    -d) DUR=$2; shift 2;;
    -c) CONCS=$2; shift 2;;
    *) echo "usage: bench/loadgen-vs-wrk.sh [-r REPS] [-d DUR] [-c \"64 8\"]" >&2; exit 2;;
  esac
done
LUA=../shared/bench/ce.lua
. bench/rig-tools.sh
need_rig ce.lua
cargo build --release -q -p imc-loadgen
LOADGEN=${CARGO_TARGET_DIR:-target}/release/imc-loadgen
OUT=$PWD/target/bench-results/loadgen-vs-wrk
rm -rf "$OUT"; mkdir -p "$OUT/nginx/tmp"
nginx_conf "$OUT/nginx.conf" "$OUT" nginx \
  "  server { listen 127.0.0.1:$PORT reuseport backlog=4096; location / { return 202; } }"
taskset -c 0 nginx -e "$OUT/nginx/nginx-error.log" -p "$OUT/nginx" -c "$OUT/nginx.conf" > "$OUT/nginx.out" 2>&1 &
NGINX=$!
trap 'kill -QUIT $NGINX 2>/dev/null; wait $NGINX 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done
URL="http://127.0.0.1:$PORT/"
export CE_HOST=$HOST CE_PATH=/

LIB="python3 ../shared/bench/benchlib.py"
MAX_BUSY=${MAX_BUSY:-0.10}
MAX_FOREIGN=${MAX_FOREIGN:-1.0}

wait_quiet() {
  local tries=0 busy
  while :; do
    busy=$($LIB sysbusy 3 | sed -E 's/^cpu=([0-9.]+).*/\1/')
    awk -v b="$busy" -v m="$MAX_BUSY" 'BEGIN{exit !(b<=m)}' && return 0
    tries=$((tries + 1))
    [ $tries -ge 40 ] && { echo "machine still busy ($busy); measuring anyway" >&2; return 0; }
    sleep 5
  done
}

load() { # tool conc dur driver: one run pinned to core 1, its CPU seconds in $OUT/cpu.txt
  if [ "$1" = wrk ]; then
    taskset -c 1 /usr/bin/time -f '%U %S' -o "$OUT/cpu.txt" \
      wrk -t1 -c"$2" -d"$3" -s "$LUA" "$URL" > "$OUT/wrk.txt"
    awk '/^Requests\/sec:/ { print $2 }' "$OUT/wrk.txt"
  else
    taskset -c 1 /usr/bin/time -f '%U %S' -o "$OUT/cpu.txt" \
      "$LOADGEN" send "$URL" --host "$HOST" -c "$2" -d "$3" --size 1024 --io-driver "$4" --json -q \
      > "$OUT/loadgen.json"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$OUT/loadgen.json"
  fi
}

measure() { # tool conc driver -> requests/s of an undisturbed run
  local attempt rps s0 s1 n0 n1 foreign
  for attempt in 1 2 3 4; do
    wait_quiet
    load "$1" "$2" "$WARM" "$3" > /dev/null
    s0=$($LIB cpustat); n0=$($LIB tree "$NGINX" | cut -d' ' -f1)
    rps=$(load "$1" "$2" "$DUR" "$3")
    s1=$($LIB cpustat); n1=$($LIB tree "$NGINX" | cut -d' ' -f1)
    # CPU used by anything but nginx and the load generator during the run (as rig.sh counts it).
    foreign=$(echo "$s0 $s1 $n0 $n1 $(cat "$OUT/cpu.txt")" |
      awk '{ printf "%.2f", ($7 - $3) + ($8 - $4) - ($10 - $9) - $11 - $12 }')
    if awk -v f="$foreign" -v m="$MAX_FOREIGN" 'BEGIN{exit !(f<=m)}' || [ $attempt = 4 ]; then
      echo "$rps $foreign"
      return
    fi
    echo "$1 $3 c=$2: other load used ${foreign}s of CPU during the run; measuring again" >&2
  done
}

printf "tool\tdriver\tconc\trep\trps\tforeign_cpu_s\n" > "$OUT/raw.tsv"
for c in $CONCS; do
  for rep in $(seq 1 "$REPS"); do
    # Alternate which tool goes first, so a drift in the machine's state does not favour one.
    order="wrk io-uring epoll"
    [ $((rep % 2)) = 0 ] && order="epoll io-uring wrk"
    for tool in $order; do
      if [ "$tool" = wrk ]; then set -- wrk -; else set -- imc-loadgen "$tool"; fi
      read -r rps foreign < <(measure "$1" "$c" "$2")
      printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$1" "$2" "$c" "$rep" "$rps" "$foreign" | tee -a "$OUT/raw.tsv"
    done
  done
done

python3 - "$OUT/raw.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
med = {}
for tool, driver, conc, rep, rps, _ in rows:
    med.setdefault((conc, tool if tool == "wrk" else driver), []).append(float(rps))
ok = True
print(f"{'conc':>4} {'wrk req/s':>10} {'loadgen io_uring':>17} {'ratio':>6} {'loadgen epoll':>14} {'ratio':>6}")
for conc in sorted({k[0] for k in med}, key=int, reverse=True):
    w = statistics.median(med[(conc, "wrk")])
    u = statistics.median(med[(conc, "io-uring")])
    e = statistics.median(med[(conc, "epoll")])
    print(f"{conc:>4} {w:>10.0f} {u:>17.0f} {u / w:>6.1%} {e:>14.0f} {e / w:>6.1%}")
    ok &= u >= 0.95 * w
print("imc-loadgen reaches at least 95% of wrk" if ok else "imc-loadgen is below 95% of wrk")
sys.exit(0 if ok else 1)
PY
