#!/usr/bin/env bash
# The test suite on a fresh machine: installs what the tests run besides the project's own
# binaries (curl; promtool and the Prometheus server, for the metrics tests; python3 with pip and
# the CloudEvents Python SDK, for tests/tests/sdk_interop.rs; python3 and the openssl CLI, for the
# apiserver fixture; objcopy, for the container image's root file system) when missing, then runs
# `cargo test --workspace`. Extra arguments go to cargo test.
#
# The container tests (tests/tests/container.rs) also need a running Docker daemon, and the
# manifest tests kubectl; without them those tests are skipped with a loud message, or fail
# when CI=true (as .ci/run sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
command -v objcopy >/dev/null || need+=(binutils)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need+=(prometheus)
{ command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; } || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The version tests/python/ce_interop.py was written against (its 1.x API lives under
# cloudevents.v1 since 2.0). Debian's own python3 refuses pip installs outside a venv unless told.
if ! python3 -c 'import cloudevents.v1.http' 2>/dev/null; then
  pip=(python3 -m pip install --quiet --disable-pip-version-check 'cloudevents==2.2.0')
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
exec cargo test --workspace "$@"
