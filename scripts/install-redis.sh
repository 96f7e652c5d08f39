#!/usr/bin/env bash
# Install Debian's redis-server when we can (root + apt-get); otherwise say exactly what to run.
set -euo pipefail
if command -v redis-server >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing redis-server (apt-get) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package's own service is not needed: Remoe starts redis-server itself, on 127.0.0.1 only.
  exit 0
fi
echo "redis-server is missing. Install it, then run make again:" >&2
echo "  Debian/Ubuntu: sudo apt-get install redis-server" >&2
echo "  macOS:         brew install redis" >&2
exit 1
