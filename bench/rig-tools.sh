# Sourced by the end-to-end scripts: the shared rig's file $1 must sit beside the project, and
# nginx-light and wrk are installed with apt-get when missing.
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
