#!/usr/bin/env bash
# The test suite on a fresh machine: installs what the tests run besides the project's own
# binaries (curl; promtool and the Prometheus server, for the metrics tests; python3 and the
# openssl CLI, for the apiserver fixture) with apt-get when missing, then runs
# `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
exec cargo test --workspace "$@"
