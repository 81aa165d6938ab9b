#!/usr/bin/env bash
# imc-loadgen send against wrk, in one run, on the rig's null ceiling: one nginx worker answering
# 202 pinned to core 0, the load generator pinned to core 1 (one thread), 1 KiB binary-mode
# CloudEvents, the same Host header and connection counts. Each measurement follows an unrecorded
# warm-up of the same tool; the tools alternate within every repetition. Prints requests/s
# (medians) and imc-loadgen's ratio to wrk; exits 1 if imc-loadgen (io_uring) is below 95% of wrk.
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
[ -f "$LUA" ] || { echo "$LUA not found (the shared benchmark rig sits beside the project)" >&2; exit 2; }
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light wrk
fi
cargo build --release -q -p imc-loadgen
LOADGEN=${CARGO_TARGET_DIR:-target}/release/imc-loadgen
OUT=$PWD/target/bench-results/loadgen-vs-wrk
rm -rf "$OUT"; mkdir -p "$OUT/nginx/tmp"
cat > "$OUT/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  client_body_buffer_size 64k;
  client_body_temp_path $OUT/nginx/tmp/body;
  proxy_temp_path $OUT/nginx/tmp/proxy;
  fastcgi_temp_path $OUT/nginx/tmp/fastcgi;
  uwsgi_temp_path $OUT/nginx/tmp/uwsgi;
  scgi_temp_path $OUT/nginx/tmp/scgi;
  server { listen 127.0.0.1:$PORT reuseport backlog=4096; location / { return 202; } }
}
EOF
taskset -c 0 nginx -e "$OUT/nginx/error.log" -p "$OUT/nginx" -c "$OUT/nginx.conf" > "$OUT/nginx.out" 2>&1 &
NGINX=$!
trap 'kill -QUIT $NGINX 2>/dev/null; wait $NGINX 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done
URL="http://127.0.0.1:$PORT/"
export CE_HOST=$HOST CE_PATH=/

run_wrk() { # conc dur -> requests/s
  taskset -c 1 wrk -t1 -c"$1" -d"$2" -s "$LUA" "$URL" > "$OUT/wrk.txt"
  awk '/^Requests\/sec:/ { print $2 }' "$OUT/wrk.txt"
}
run_loadgen() { # conc dur driver -> requests/s
  taskset -c 1 "$LOADGEN" send "$URL" --host "$HOST" -c "$1" -d "$2" --size 1024 \
    --io-driver "$3" --json -q > "$OUT/loadgen.json"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$OUT/loadgen.json"
}

printf "tool\tdriver\tconc\trep\trps\n" > "$OUT/raw.tsv"
for c in $CONCS; do
  for rep in $(seq 1 "$REPS"); do
    # Alternate which tool goes first, so a drift in the machine's state does not favour one.
    order="wrk io-uring epoll"
    [ $((rep % 2)) = 0 ] && order="epoll io-uring wrk"
    for tool in $order; do
      if [ "$tool" = wrk ]; then
        run_wrk "$c" "$WARM" > /dev/null
        rps=$(run_wrk "$c" "$DUR")
        printf "wrk\t-\t%s\t%s\t%s\n" "$c" "$rep" "$rps" | tee -a "$OUT/raw.tsv"
      else
        run_loadgen "$c" "$WARM" "$tool" > /dev/null
        rps=$(run_loadgen "$c" "$DUR" "$tool")
        printf "imc-loadgen\t%s\t%s\t%s\t%s\n" "$tool" "$c" "$rep" "$rps" | tee -a "$OUT/raw.tsv"
      fi
    done
  done
done

python3 - "$OUT/raw.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
med = {}
for tool, driver, conc, rep, rps in rows:
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
