# Sourced by the benchmark scripts; it only defines functions.
#
# need_rig: the shared rig's file $1 must sit beside the project, and nginx-light and wrk are
# installed with apt-get when missing.
need_rig() {
  [ -e "../shared/bench/$1" ] || {
    echo "../shared/bench/$1 not found (the shared benchmark rig sits beside the project)" >&2
    exit 2
  }
  if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light wrk
  fi
}

# Writes an nginx configuration to $1 for one worker with its files under $2 (pid, error log and
# temporary paths in $2/nginx, which must exist with its tmp/ directory), serving the `server`
# blocks in $4 inside `http`. $3 is the file name stem (e.g. nginx, null); a fifth argument adds
# lines at the top level (e.g. `master_process off;`).
nginx_conf() {
  local conf=$1 out=$2 stem=$3 servers=$4 top=${5:-}
  cat > "$conf" <<NGINX
worker_processes 1;
$top
daemon off;
pid $out/nginx/$stem.pid;
error_log $out/nginx/$stem-error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  client_body_buffer_size 64k;
  client_body_temp_path $out/nginx/tmp/body;
  proxy_temp_path $out/nginx/tmp/proxy;
  fastcgi_temp_path $out/nginx/tmp/fastcgi;
  uwsgi_temp_path $out/nginx/tmp/uwsgi;
  scgi_temp_path $out/nginx/tmp/scgi;
$servers
}
NGINX
}

# Writes to $1 the InMemoryChannel every benchmark serves (default/demo, so its host is
# demo-kn-channel.default.svc.cluster.local), with one subscriber per further argument: the
# subscriber URIs, uids s1, s2, ...
channel_file() {
  local file=$1 i=0 uri; shift
  {
    printf 'apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: demo, namespace: default}\nspec:\n  subscribers:\n'
    for uri in "$@"; do i=$((i + 1)); printf '  - {uid: s%s, subscriberUri: "%s"}\n' "$i" "$uri"; done
  } > "$file"
}

# Waits until the dispatcher on 127.0.0.1:$1 answers the kubelet's readiness probe (204), polling
# $2 times (default 100) every $3 s (default 0.1). Fails when it never does.
wait_ready() {
  local port=$1 tries=${2:-100} pause=${3:-0.1}
  for _ in $(seq 1 "$tries"); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -A kube-probe/1.30 "http://127.0.0.1:$port/")" = 204 ] && return 0
    sleep "$pause"
  done
  return 1
}
