#!/usr/bin/env bash
# System packages Remoe's tests and tools use, from Debian's archive:
#   redis-server                      the predictor's global prior (Remoe starts it itself, on 127.0.0.1)
#   fortunes* python3-doc             real text for `remoe corpus build`
#   docker-compose                    validates docker-compose.yml offline (`docker-compose config -q`; no engine)
# kubectl (renders k8s/ with `kubectl kustomize`) is not in Debian's archive at a usable version: when it is
# missing this script says where to get it.
# Installed with apt-get when we can (root); otherwise the exact command to run is printed.
set -euo pipefail
missing=""
command -v redis-server >/dev/null || missing="$missing redis-server"
[ -d /usr/share/games/fortunes/de ] || missing="$missing fortunes fortunes-min fortunes-de fortunes-es fortunes-it"
[ -d /usr/share/doc/python3.11-doc/html/library ] || [ -d /usr/share/doc/python3-doc/html/library ] || missing="$missing python3-doc"
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing="$missing docker-compose"
if ! command -v kubectl >/dev/null; then
  echo "kubectl not found: the k8s/ tests need it. Install it from https://kubernetes.io/docs/tasks/tools/ (any" >&2
  echo "  release >= 1.27), e.g. apt-get install kubectl from the Kubernetes apt repository." >&2
fi
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
