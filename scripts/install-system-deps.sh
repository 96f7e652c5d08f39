#!/usr/bin/env bash
# System packages Remoe's tests and tools use, from Debian's archive:
#   redis-server                      the predictor's global prior (Remoe starts it itself, on 127.0.0.1)
#   fortunes* python3-doc             real text for `remoe corpus build`
# Installed with apt-get when we can (root); otherwise the exact command to run is printed.
set -euo pipefail
PACKAGES="redis-server fortunes fortunes-min fortunes-de fortunes-es fortunes-it python3-doc"
missing=""
command -v redis-server >/dev/null || missing="$missing redis-server"
[ -d /usr/share/games/fortunes/de ] || missing="$missing fortunes fortunes-min fortunes-de fortunes-es fortunes-it"
[ -d /usr/share/doc/python3.11-doc/html/library ] || [ -d /usr/share/doc/python3-doc/html/library ] || missing="$missing python3-doc"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing:$missing (apt-get) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  exit 0
fi
echo "missing system packages:$missing. Install them, then run make again:" >&2
echo "  Debian/Ubuntu: sudo apt-get install$missing" >&2
exit 1
