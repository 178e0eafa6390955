#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io when missing, start dockerd when
# it is not running (in the background, logging to $DOCKERD_LOG). Exit 1 when that cannot work.
#
#     bash scripts/docker_up.sh
set -euo pipefail
DOCKER=/usr/bin/docker  # Debian's client: BuildKit built in (another `docker` on PATH may lack it)
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

if ! [ -x "$DOCKER" ] || ! command -v dockerd >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "docker.io is not installed and this is not root"; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null
fi
if "$DOCKER" info >/dev/null 2>&1; then exit 0; fi
nohup dockerd >"$LOG" 2>&1 &
for _ in $(seq 60); do
  "$DOCKER" info >/dev/null 2>&1 && { echo "dockerd started (log: $LOG)"; exit 0; }
  sleep 1
done
echo "dockerd did not start; last lines of $LOG:"; tail -20 "$LOG"; exit 1
