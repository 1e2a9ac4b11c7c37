#!/usr/bin/env bash
# Stop the Ceph cluster started by scripts/rgw/start.sh DIR: radosgw, OSD, monitor, by their
# pid files (never by name, so other clusters on the machine are left alone).
#   scripts/rgw/stop.sh DIR [--rm]    (--rm also deletes DIR)
set -uo pipefail
DIR=${1:?usage: stop.sh DIR [--rm]}
[ -d "$DIR" ] || exit 0
pids=()
for name in client.rgw.a osd.0 mon.a; do
  f="$DIR/run/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  fi
done
for _ in $(seq 1 50); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
if [ "${2:-}" = "--rm" ]; then rm -rf "$DIR"; fi
exit 0
