#!/usr/bin/env bash
# The InMemoryChannel demo on one machine, no cluster: an event display subscriber (`imc-loadgen
# sink --display`), the real imc-dispatcher serving config/examples/demo.yaml, and one CloudEvent
# sent with curl. Prints what the sender got back and what the subscriber saw, then stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p imc-dispatcher -p imc-loadgen
BIN="${CARGO_TARGET_DIR:-target}/debug"
LOG=$(mktemp)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -f "$LOG"' EXIT

"$BIN/imc-loadgen" sink --display --listen 127.0.0.1:8081 > "$LOG" 2>&1 & pids+=($!)
"$BIN/imc-dispatcher" --channels config/examples/demo.yaml --listen 127.0.0.1:8080 \
  --metrics-listen 127.0.0.1:0 --workers 2 & pids+=($!)

# Ready when a kubelet-style probe gets 204 (the channel set is installed on every worker).
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -A kube-probe/1.30 http://127.0.0.1:8080/healthz)" = 204 ] && break
  sleep 0.1
done

echo "--- sending a heartbeat event to the demo channel"
curl -sS -i http://127.0.0.1:8080/ \
  -H 'Host: demo-kn-channel.default.svc.cluster.local' \
  -H 'Ce-Specversion: 1.0' -H 'Ce-Type: dev.knative.eventing.samples.heartbeat' \
  -H 'Ce-Source: https://knative.dev/eventing-contrib/cmd/heartbeats/#default/heartbeats' \
  -H "Ce-Id: $(cat /proc/sys/kernel/random/uuid)" -H "Ce-Time: $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -H 'Ce-Beats: true' -H 'Ce-Heart: yes' -H 'Ce-The: 42' \
  -H 'Content-Type: application/json' -d '{"id":11,"label":""}'
sleep 0.3
echo "--- the event display subscriber printed:"
cat "$LOG"
