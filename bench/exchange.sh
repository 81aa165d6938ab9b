#!/usr/bin/env bash
# The floor of the I/O layer: the CPU and the syscalls of one HTTP exchange (a request read, a
# response written) on the server side, with nothing else in the path (issue 14, item 1).
#
#   bench/exchange.sh [-r REPS] [-d DUR] [-c "64 8"] [-D "io-uring epoll"] [-n "1"]
#                     [-b "before=DIR after=DIR"] [-s "sink ring dispatcher"]
#
# -s: which servers to run (default all): sink, ring (ring-sink and its steps), dispatcher.
# -n: the dispatcher's fan-out (subscribers per event; each is a path on the one subscriber sink).
# -b: compare builds in one run (issue 14: each step's before/after row): each LABEL=DIR names a
#     directory holding `imc-dispatcher` and `imc-loadgen`; the servers under test are run from
#     DIR, the load generator and the subscriber sink always from this tree's release build, so
#     only the server changes. Rows interleave the builds within each repetition, so drift on the
#     shared machine falls on both. Without -b: one build, this tree's, labelled "this".
#
# Three servers, each alone on core 0 with `imc-loadgen send` (1 KiB binary events, closed loop,
# io_uring) on core 1:
#   sink        `imc-loadgen sink`: one exchange per event;
#   ring-sink   `imc-loadgen ring-sink` (io-uring rows only; builds that have it): the same
#               exchange on an io_uring driven by hand, with fixed files, multishot receive and a
#               provided-buffer ring, which monoio does not use: what moving off monoio could give;
#   ring-plain, ring+defer, ring+fixed
#               the ring sink's features added one at a time (builds whose ring-sink has the
#               flags): ring-plain is what monoio does (plain descriptors, one receive per read
#               into a buffer per connection, COOP_TASKRUN + SINGLE_ISSUER); +defer adds
#               DEFER_TASKRUN; +fixed the fixed-file table; ring-sink then adds multishot receive
#               into provided buffers. ring-plain against sink is monoio's own cost;
#   dispatcher  `imc-dispatcher --workers 1` with one subscriber (an `imc-loadgen sink` on core 1):
#               two exchanges per event (the sender's, and its own to the subscriber as a client);
#               its figure is per exchange, i.e. CPU per event / 2.
# For each (server, driver, connections): events/s, the server's CPU µs per exchange (utime +
# stime from /proc over the measured interval only), the kernel's part of it (stime: what no
# change in user space can remove), syscalls per exchange (`perf stat -e raw_syscalls:sys_enter`
# on the server's process over the same interval, where perf's tracepoints work; else `strace -c
# -f` on a separate, shorter run, which slows the server and is marked so), and instructions and
# cycles per exchange where `perf stat` has hardware counters
# (many VMs have none: then "-").
#
# Medians of REPS. Traffic stays on 127.0.0.1; every run is bounded by DUR. Raw rows:
# target/bench-results/exchange/raw.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3
DUR=8s
CONNS="64 8"
DRIVERS="io-uring epoll"
FANOUT="1"
BUILDS=""
KINDS="sink ring dispatcher"
while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS=$2; shift 2;;
    -d) DUR=$2; shift 2;;
    -c) CONNS=$2; shift 2;;
    -D) DRIVERS=$2; shift 2;;
    -n) FANOUT=$2; shift 2;;
    -b) BUILDS=$2; shift 2;;
    -s) KINDS=$2; shift 2;;
    *) echo "usage: bench/exchange.sh [-r REPS] [-d DUR] [-c \"64 8\"] [-D \"io-uring epoll\"] [-n \"1 4\"] [-b \"LABEL=DIR ...\"] [-s \"sink ring dispatcher\"]" >&2; exit 2;;
  esac
done
. bench/rig-tools.sh
cargo build --release -q -p imc-dispatcher -p imc-loadgen
BIN=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
[ -n "$BUILDS" ] || BUILDS="this=$BIN"
for b in $BUILDS; do
  [ -x "${b#*=}/imc-dispatcher" ] && [ -x "${b#*=}/imc-loadgen" ] || { echo "exchange.sh: ${b#*=} lacks imc-dispatcher or imc-loadgen" >&2; exit 2; }
done
OUT=$PWD/target/bench-results/exchange
rm -rf "$OUT"; mkdir -p "$OUT"
PORT=18190
SUB=19190
WARMUP=2
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

# What this machine's perf can count.
tracepoints=0; counters=0
if perf stat -e raw_syscalls:sys_enter -x, true >/dev/null 2>&1; then tracepoints=1; fi
# With -x, the first field of a counted event is a number; "<not supported>" otherwise.
if perf stat -e instructions -x, true 2>&1 | awk -F, '$3 == "instructions" && $1 ~ /^[0-9]+$/ { ok = 1 } END { exit !ok }'; then
  counters=1
fi
echo "perf: syscall tracepoints $([ $tracepoints = 1 ] && echo yes || echo no), hardware counters $([ $counters = 1 ] && echo yes || echo no)"

# utime + stime, and stime alone (the kernel's part: what no user-space change can remove).
cpu_of() { awk '{ print $14 + $15, $15 }' "/proc/$1/stat"; }

printf "build\tserver\tdriver\tconns\trep\trps\tcpu_s\tevents\texchanges\tsyscalls\tinstructions\tcycles\tp99_us\tkernel_s\n" > "$OUT/raw.tsv"
has() { case " $KINDS " in *" $1 "*) return 0;; esac; return 1; }
SERVERS=""
has sink && SERVERS="sink"
has ring && SERVERS="$SERVERS ring-plain ring+defer ring+fixed ring-sink"
for n in $FANOUT; do
  has dispatcher && SERVERS="$SERVERS dispatcher-n$n"
  channel_file "$OUT/channels-n$n.yaml" $(for i in $(seq 1 "$n"); do echo "http://127.0.0.1:$SUB/s$i"; done)
done
for rep in $(seq 1 "$REPS"); do
for driver in $DRIVERS; do
for conns in $CONNS; do
for server in $SERVERS; do
# Odd repetitions run the builds in the order given, even ones in reverse: a bias for whichever
# runs first (or second) falls on each build alike.
order=$BUILDS
[ $((rep % 2)) = 0 ] && order=$(printf '%s\n' $BUILDS | tac | tr '\n' ' ')
for build in $order; do
  label=${build%%=*}; SRV=${build#*=}
  if [ "${server#ring}" != "$server" ]; then
    case $server in
      ring-plain) flags=(--no-fixed-files --single-recv --no-defer-taskrun);;
      ring+defer) flags=(--no-fixed-files --single-recv);;
      ring+fixed) flags=(--single-recv);;
      *) flags=();;
    esac
    [ "$driver" = io-uring ] && "$SRV/imc-loadgen" ring-sink --help 2>/dev/null | grep -q -- "${flags[0]:---listen}" || continue
    taskset -c 0 "$SRV/imc-loadgen" ring-sink --listen "127.0.0.1:$PORT" "${flags[@]}" 2> "$OUT/server.log" &
    srv=$!; pids+=($srv); per_event=1; host=()
    for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")" = 202 ] && break; sleep 0.05; done
  elif [ "$server" = sink ]; then
    taskset -c 0 "$SRV/imc-loadgen" sink --listen "127.0.0.1:$PORT" --io-driver "$driver" 2> "$OUT/server.log" &
    srv=$!; pids+=($srv); per_event=1; host=()
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/report" && break; sleep 0.05; done
  else
    taskset -c 1 "$BIN/imc-loadgen" sink --listen "127.0.0.1:$SUB" 2> "$OUT/sub.log" &
    pids+=($!)
    n=${server#dispatcher-n}
    taskset -c 0 "$SRV/imc-dispatcher" --channels "$OUT/channels-n$n.yaml" --listen "127.0.0.1:$PORT" \
      --metrics-listen 127.0.0.1:0 --workers 1 --io-driver "$driver" 2> "$OUT/server.log" &
    srv=$!; pids+=($srv); per_event=$((1 + n)); host=(--host demo-kn-channel.default.svc.cluster.local)
    wait_ready "$PORT" 100 0.05 || true
  fi
  secs=${DUR%s}
  # The measured interval starts after the warm-up: CPU sampled, perf attached for DUR.
  (
    sleep "$WARMUP"
    cpu_of "$srv" > "$OUT/cpu0"
    if [ $tracepoints = 1 ] || [ $counters = 1 ]; then
      ev=()
      [ $tracepoints = 1 ] && ev+=(-e raw_syscalls:sys_enter)
      [ $counters = 1 ] && ev+=(-e instructions -e cycles)
      perf stat "${ev[@]}" -x, -p "$srv" -o "$OUT/perf.csv" -- sleep "$secs" 2>/dev/null || true
    fi
  ) &
  sampler=$!
  taskset -c 1 "$BIN/imc-loadgen" send "http://127.0.0.1:$PORT/" "${host[@]}" -c "$conns" \
    -d "$DUR" --warmup "${WARMUP}s" --json -q > "$OUT/send.json" || true
  wait "$sampler"
  cpu1=$(cpu_of "$srv")
  count() { [ -s "$OUT/perf.csv" ] && awk -F, -v e="$1" '$3 == e { print $1 }' "$OUT/perf.csv" | head -1 || true; }
  sys=$(count raw_syscalls:sys_enter); ins=$(count instructions); cyc=$(count cycles)
  rm -f "$OUT/perf.csv"
  python3 - "$OUT/send.json" "$label" "$server" "$driver" "$conns" "$rep" "$(cat "$OUT/cpu0")" "$cpu1" "$per_event" "${sys:--}" "${ins:--}" "${cyc:--}" >> "$OUT/raw.tsv" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
label, server, driver, conns, rep, c0, c1, per_event, sys_, ins, cyc = sys.argv[2:]
(c0, k0), (c1, k1) = c0.split(), c1.split()
tck = os.sysconf("SC_CLK_TCK")
exchanges = r["requests"] * int(per_event)
p99 = dict(r["latency"]["quoted"]).get("p99", 0)
print(f"{label}\t{server}\t{driver}\t{conns}\t{rep}\t{r['rps']:.0f}\t{(int(c1) - int(c0)) / tck:.2f}\t{r['requests']}\t{exchanges}\t{sys_}\t{ins}\t{cyc}\t{p99:.0f}\t{(int(k1) - int(k0)) / tck:.2f}")
PY
  tail -1 "$OUT/raw.tsv"
  cleanup
done
done
done
done
done

# Without tracepoints: syscalls per exchange from strace -c on one short extra run per point.
if [ $tracepoints = 0 ] && command -v strace >/dev/null; then
  echo "syscalls from strace -c (slows the server; counts only)"
  for driver in $DRIVERS; do for conns in $CONNS; do
    taskset -c 0 strace -c -f -o "$OUT/strace-$driver-$conns.txt" "$BIN/imc-loadgen" sink \
      --listen "127.0.0.1:$PORT" --io-driver "$driver" 2> "$OUT/server.log" &
    pids+=($!)
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/report" && break; sleep 0.05; done
    taskset -c 1 "$BIN/imc-loadgen" send "http://127.0.0.1:$PORT/" -c "$conns" -n 20000 --json -q > "$OUT/strace-send.json" || true
    cleanup
    echo "sink $driver c=$conns: $(awk '/total/ { print $3 }' "$OUT/strace-$driver-$conns.txt") syscalls / 20000 exchanges"
  done; done
fi

python3 - "$OUT/raw.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
# build server driver conns rep rps cpu_s events exchanges syscalls instructions cycles p99_us kernel_s
print(f"{'build':8} {'server':14} {'driver':8} {'conns':>5} {'events/s':>9} {'us/event':>8} {'us/exch':>7} {'kern/exch':>9} {'sys/exch':>8} {'instr/exch':>10} {'cycles/exch':>11} {'p99 us':>7}")
keys = []
for r in rows:
    if tuple(r[:4]) not in keys:
        keys.append(tuple(r[:4]))
order = {b: i for i, b in enumerate(dict.fromkeys(r[0] for r in rows if r[4] == "1"))}
# Grouped by point (servers in the order run: the ring's steps in order), the builds side by
# side in the order given.
servers = {s: i for i, s in enumerate(dict.fromkeys(r[1] for r in rows))}
keys.sort(key=lambda k: (servers[k[1]], k[2], -int(k[3]), order[k[0]]))
for k in keys:
    g = [r for r in rows if tuple(r[:4]) == k]
    med = lambda f: statistics.median(f(r) for r in g)
    rps = med(lambda r: float(r[5]))
    ev = med(lambda r: float(r[6]) * 1e6 / float(r[7]))
    ex = med(lambda r: float(r[6]) * 1e6 / float(r[8]))
    per = lambda i: "-" if any(r[i] == "-" for r in g) else f"{med(lambda r: float(r[i]) / float(r[8])):.1f}"
    p99 = med(lambda r: float(r[12]))
    kern = med(lambda r: float(r[13]) * 1e6 / float(r[8]))
    print(f"{k[0]:8} {k[1]:14} {k[2]:8} {k[3]:>5} {rps:>9.0f} {ev:>8.2f} {ex:>7.2f} {kern:>9.2f} {per(9):>8} {per(10):>10} {per(11):>11} {p99:>7.0f}")
PY
