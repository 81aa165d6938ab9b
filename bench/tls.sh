#!/usr/bin/env bash
# What TLS costs the dispatcher, in one run: imc-dispatcher --workers 1 on core 0; wrk (1 KiB
# binary CloudEvents, keep-alive) and nginx sinks (http, and https with a test CA's certificate)
# on core 1. Rows, each with the dispatcher's CPU per event:
#
#   in=http  out=http   N=1 and N=4   the plain baseline
#   in=https out=http   N=1           https ingress with keep-alive (8443, permissive mode)
#   in=http  out=https  N=1 and N=4   https subscribers over the keep-alive pool
#
# then nginx on the same rig answering 202 itself over http and https (its CPU per request: what
# TLS costs a C server), and the handshake cost on the https ingress: opening new
# connections with `openssl s_client` (full handshakes) and resuming a session, the dispatcher's
# CPU per handshake.
#
#   bench/tls.sh [-r REPS] [-d DUR]
#
# Needs nginx-light, wrk and openssl (installed with apt-get if missing). Traffic stays on
# 127.0.0.1; every run is bounded by DUR. Raw rows: target/bench-results/tls/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3
DUR=10s
while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS=$2; shift 2;;
    -d) DUR=$2; shift 2;;
    *) echo "usage: bench/tls.sh [-r REPS] [-d DUR]" >&2; exit 2;;
  esac
done
. bench/rig-tools.sh
need_rig ce.lua
if ! command -v openssl >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl
fi
cargo build --release -q -p imc-dispatcher
BIN=${CARGO_TARGET_DIR:-target}/release/imc-dispatcher
OUT=$PWD/target/bench-results/tls
rm -rf "$OUT"; mkdir -p "$OUT/pki" "$OUT/nginx/tmp"
PORT=18090; TLS_PORT=18443; SINK=19001; TLS_SINK=19101
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

# A test CA and one certificate for localhost/127.0.0.1 (the dispatcher's and the sinks').
(
  cd "$OUT/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout tls.key -out tls.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
  openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext \
    -out tls.crt 2>/dev/null
)
mkdir -p "$OUT/pki/trust" && cp "$OUT/pki/ca.pem" "$OUT/pki/trust/"

# Sinks: 4 http and 4 https servers answering 202 with keep-alive, one nginx worker on core 1.
blocks=""
for i in 0 1 2 3; do
  blocks+="  server { listen 127.0.0.1:$((SINK + i)) reuseport backlog=4096; location / { return 202; } }"$'\n'
  blocks+="  server { listen 127.0.0.1:$((TLS_SINK + i)) ssl reuseport backlog=4096; ssl_certificate $OUT/pki/tls.crt; ssl_certificate_key $OUT/pki/tls.key; ssl_protocols TLSv1.3; ssl_session_cache shared:S:1m; location / { return 202; } }"$'\n'
done
nginx_conf "$OUT/nginx.conf" "$OUT" nginx "$blocks"
taskset -c 1 nginx -e "$OUT/nginx/nginx-error.log" -p "$OUT/nginx" -c "$OUT/nginx.conf" > "$OUT/nginx.out" 2>&1 &
pids+=($!)
sleep 0.5

start_dispatcher() { # out-scheme n
  channel_file "$OUT/channels.yaml" $(for i in $(seq 0 $(($2 - 1))); do
    if [ "$1" = https ]; then echo "https://localhost:$((TLS_SINK + i))/"; else echo "http://127.0.0.1:$((SINK + i))/"; fi
  done)
  taskset -c 0 "$BIN" --channels "$OUT/channels.yaml" --listen "127.0.0.1:$PORT" \
    --tls-listen "127.0.0.1:$TLS_PORT" --metrics-listen 127.0.0.1:0 --workers 1 \
    --tls-cert "$OUT/pki/tls.crt" --tls-key "$OUT/pki/tls.key" --transport-encryption permissive \
    --custom-certs-dir "$OUT/pki/trust" 2> "$OUT/dispatcher.log" &
  DISP=$!; pids+=($DISP)
  wait_ready "$PORT" && return 0
  echo "dispatcher not ready; log:" >&2; cat "$OUT/dispatcher.log" >&2; exit 1
}
stop_dispatcher() { kill "$DISP" 2>/dev/null || true; wait "$DISP" 2>/dev/null || true; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# CPU time of every thread of a process in ns (schedstat: exact, where the ticks above are 10 ms).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }

printf "in\tout\tn\trep\trps\tp99_ms\tdisp_cpu_s\trequests\terrors\n" > "$OUT/raw.tsv"
for rep in $(seq 1 "$REPS"); do
  for row in "http http 1" "https http 1" "http https 1" "http http 4" "http https 4"; do
    set -- $row; in=$1; out=$2; n=$3
    start_dispatcher "$out" "$n"
    if [ "$in" = https ]; then url="https://127.0.0.1:$TLS_PORT/default/demo"; else url="http://127.0.0.1:$PORT/default/demo"; fi
    export CE_PATH=/default/demo
    taskset -c 1 wrk -t1 -c64 -d2s -s ../shared/bench/ce.lua "$url" > "$OUT/warm.txt" 2>&1 || true
    c0=$(cpu_ticks "$DISP")
    taskset -c 1 wrk -t1 -c64 -d"$DUR" --latency -s ../shared/bench/ce.lua "$url" > "$OUT/wrk-$in-$out-$n-$rep.txt" 2>&1 || true
    c1=$(cpu_ticks "$DISP")
    python3 - "$OUT/wrk-$in-$out-$n-$rep.txt" "$in" "$out" "$n" "$rep" "$c0" "$c1" >> "$OUT/raw.tsv" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
i, o, n, rep, c0, c1 = sys.argv[2:]
req = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)] if m else float("nan")
err = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(err.group(1)) if err else 0) + (sum(map(int, sock.groups())) if sock else 0)
cpu = (int(c1) - int(c0)) / os.sysconf("SC_CLK_TCK")
print(f"{i}\t{o}\t{n}\t{rep}\t{rps:.0f}\t{p99:.2f}\t{cpu:.2f}\t{req}\t{errors}")
PY
    tail -1 "$OUT/raw.tsv"
    stop_dispatcher
  done
done

# The same rig's nginx terminating TLS: one nginx process on core 0 answering 202 itself, over
# http and https, its CPU per request (what a request costs a TLS server written in C).
nginx_conf "$OUT/null.conf" "$OUT" null \
  "  server { listen 127.0.0.1:$PORT; location / { return 202; } }
  server { listen 127.0.0.1:$TLS_PORT ssl; ssl_certificate $OUT/pki/tls.crt; ssl_certificate_key $OUT/pki/tls.key; ssl_protocols TLSv1.3; location / { return 202; } }" \
  "master_process off;"
printf "scheme\trep\trps\tcpu_s\trequests\n" > "$OUT/nginx.tsv"
taskset -c 0 nginx -e "$OUT/nginx/null-error.log" -p "$OUT/nginx" -c "$OUT/null.conf" > "$OUT/null.out" 2>&1 &
NULL=$!; pids+=($NULL)
sleep 0.5
for rep in $(seq 1 "$REPS"); do
  for scheme in http https; do
    if [ "$scheme" = https ]; then url="https://127.0.0.1:$TLS_PORT/default/demo"; else url="http://127.0.0.1:$PORT/default/demo"; fi
    c0=$(cpu_ticks "$NULL")
    taskset -c 1 wrk -t1 -c64 -d"$DUR" -s ../shared/bench/ce.lua "$url" > "$OUT/null-$scheme-$rep.txt" 2>&1 || true
    c1=$(cpu_ticks "$NULL")
    python3 - "$OUT/null-$scheme-$rep.txt" "$scheme" "$rep" "$c0" "$c1" >> "$OUT/nginx.tsv" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
scheme, rep, c0, c1 = sys.argv[2:]
req = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(f"{scheme}\t{rep}\t{rps:.0f}\t{(int(c1) - int(c0)) / os.sysconf('SC_CLK_TCK'):.2f}\t{req}")
PY
    tail -1 "$OUT/nginx.tsv"
  done
done
kill "$NULL" 2>/dev/null || true; wait "$NULL" 2>/dev/null || true

# Handshakes on the https ingress: HS_N connections with `openssl s_client`, each a full
# handshake, then HS_N resuming one saved session (s_time -reuse does not resume TLS 1.3
# sessions); the dispatcher's CPU over each loop (less its idle CPU over the same time) per
# handshake, each connection carrying one HTTP/1.0 request. The client processes are on core 1.
HS_N=${HS_N:-300}
start_dispatcher http 1
printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$OUT/pki/ca.pem" \
  -sess_out "$OUT/session.pem" -ign_eof > /dev/null 2>&1 || true
# What the idle dispatcher uses (its 20 ms ticker, the file watchers), subtracted below: a loop of
# s_client processes takes seconds of wall time for a few hundred milliseconds of handshakes.
i0=$(cpu_ns "$DISP"); sleep 5; i1=$(cpu_ns "$DISP")
IDLE_NS_PER_S=$(( (i1 - i0) / 5 ))
printf "kind\trep\tconnections\tdisp_cpu_s\tresumed\n" > "$OUT/handshakes.tsv"
for rep in $(seq 1 "$REPS"); do
  for kind in new reuse; do
    # TLS 1.3 tickets are single-use: each resumption saves the next ticket for the one after.
    sess=(); [ "$kind" = reuse ] && sess=(-sess_in "$OUT/session.pem" -sess_out "$OUT/session.pem")
    c0=$(cpu_ns "$DISP"); t0=$(date +%s%N)
    for _ in $(seq 1 "$HS_N"); do
      printf 'GET / HTTP/1.0\r\n\r\n' | taskset -c 1 openssl s_client -connect "127.0.0.1:$TLS_PORT" \
        -CAfile "$OUT/pki/ca.pem" "${sess[@]}" -ign_eof 2>/dev/null | grep -E '^(New|Reused),' || true
    done > "$OUT/s_client-$kind-$rep.txt"
    c1=$(cpu_ns "$DISP"); t1=$(date +%s%N)
    printf "%s\t%s\t%s\t%s\t%s\n" "$kind" "$rep" "$HS_N" \
      "$(python3 -c "print(max(0, $c1 - $c0 - $IDLE_NS_PER_S * ($t1 - $t0) / 1e9) / 1e9)")" \
      "$(grep -c '^Reused' "$OUT/s_client-$kind-$rep.txt" || true)" >> "$OUT/handshakes.tsv"
    tail -1 "$OUT/handshakes.tsv"
  done
done
stop_dispatcher

python3 - "$OUT/raw.tsv" "$OUT/handshakes.tsv" "$OUT/nginx.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
print(f"{'in':5} {'out':5} {'N':>2} {'events/s':>9} {'p99 ms':>7} {'cpu us/event':>12} {'vs http':>7} {'errors':>6}")
base = {}
table = []
for key in [("http", "http", "1"), ("https", "http", "1"), ("http", "https", "1"), ("http", "http", "4"), ("http", "https", "4")]:
    g = [r for r in rows if tuple(r[:3]) == key]
    if not g:
        continue
    rps = statistics.median(float(r[4]) for r in g)
    p99 = statistics.median(float(r[5]) for r in g)
    cpu = statistics.median(float(r[6]) * 1e6 / max(int(r[7]), 1) for r in g)
    errs = sum(int(r[8]) for r in g)
    if key[0] == "http" and key[1] == "http":
        base[key[2]] = cpu
    ratio = cpu / base[key[2]] if key[2] in base else float("nan")
    print(f"{key[0]:5} {key[1]:5} {key[2]:>2} {rps:>9.0f} {p99:>7.2f} {cpu:>12.1f} {ratio:>7.2f} {errs:>6}")
hs = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])][1:]
print()
print(f"{'handshake':10} {'connections':>11} {'resumed':>7} {'cpu us/handshake':>16}")
for kind, label in (("new", "full"), ("reuse", "resumed")):
    g = [r for r in hs if r[0] == kind]
    if not g:
        continue
    conns = sum(int(r[2]) for r in g)
    resumed = sum(int(r[4]) for r in g)
    cpu = statistics.median(float(r[3]) * 1e6 / int(r[2]) for r in g)
    print(f"{label:10} {conns:>11} {resumed:>7} {cpu:>16.1f}")
ng = [l.rstrip("\n").split("\t") for l in open(sys.argv[3])][1:]
print()
print(f"{'nginx 202':10} {'req/s':>9} {'cpu us/request':>14}")
for scheme in ("http", "https"):
    g = [r for r in ng if r[0] == scheme]
    if g:
        rps = statistics.median(float(r[2]) for r in g)
        cpu = statistics.median(float(r[3]) * 1e6 / max(int(r[4]), 1) for r in g)
        print(f"{scheme:10} {rps:>9.0f} {cpu:>14.1f}")
PY
