#!/usr/bin/env bash
# Benchmarks (`npm run bench`), never part of `npm test`. Installs the system packages,
# starts a throwaway Ceph RGW on loopback like the tests do, then runs each benchmark
# section with `node --import tsx bench/<section>.ts`: each prints a table and writes
# bench-results/<section>.json. RGW is stopped on exit.
#
#   npm run bench                  every section (bench/*.ts but lib.ts, delay-proxy.ts, serve-*.ts)
#   npm run bench -- store format  only these
# Environment: HYPER_SKIP_INSTALL=1 (skip package install and npm ci), HYPER_BENCH_ARGS
# (extra arguments for every section, e.g. "--reps 1"). Sections get the S3 variables of
# the tests (HYPER_TEST_S3_ENDPOINT, ...) and HYPER_BENCH_DIR for their file:// targets.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export NODE_NO_WARNINGS=${NODE_NO_WARNINGS:-1}

# Every bench/*.ts is a section except shared code: lib.ts, delay-proxy.ts and serve-*.ts
# (processes the sections start). The store baseline runs first, then format, then the rest by name.
all_sections() {
  local f name
  for name in store format; do [ -f "bench/$name.ts" ] && echo "$name"; done
  for f in bench/*.ts; do
    name=$(basename "$f" .ts)
    case "$name" in lib | delay-proxy | serve-* | store | format) continue ;; esac
    echo "$name"
  done
}
if [ "$#" -gt 0 ]; then sections=("$@"); else mapfile -t sections < <(all_sections); fi
echo "bench sections: ${sections[*]}"

if [ "${HYPER_SKIP_INSTALL:-}" != 1 ]; then
  bash scripts/install-deps.sh || exit 1
  [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error || exit 1
fi
# The s3, local, startup and nbd --volume sections run the CLI (bin/run.js runs dist/).
npm run -s build || exit 1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hyper-bench.XXXXXX")
RGW_DIR="$WORK/rgw"
# file:// targets of the sections live here (tmpfs when there is one), removed at exit.
if [ -d /dev/shm ]; then
  HYPER_BENCH_DIR=$(mktemp -d /dev/shm/hyper-bench.XXXXXX)
else
  HYPER_BENCH_DIR="$WORK/files"
  mkdir -p "$HYPER_BENCH_DIR"
fi
export HYPER_BENCH_DIR
cleanup() {
  bash scripts/rgw/stop.sh "$RGW_DIR"
  rm -rf "$WORK" "$HYPER_BENCH_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

HYPER_RGW_MEMSTORE_MB=${HYPER_RGW_MEMSTORE_MB:-12288} bash scripts/rgw/start.sh "$RGW_DIR" || {
  tail -n 30 "$RGW_DIR"/log/*.log 2>/dev/null
  exit 1
}
# shellcheck disable=SC1091
. "$RGW_DIR/env"

failed=()
for s in "${sections[@]}"; do
  f="bench/$s.ts"
  if [ ! -f "$f" ]; then
    echo "== $s: no $f, skipped"
    continue
  fi
  echo "== bench $s"
  # shellcheck disable=SC2086
  if node --import tsx "$f" ${HYPER_BENCH_ARGS:-}; then
    echo "== bench $s: ok"
  else
    echo "== bench $s: FAILED or missed a target"
    failed+=("$s")
  fi
done
echo "results in bench-results/"
[ "${#failed[@]}" = 0 ] || { echo "not ok: ${failed[*]}"; exit 1; }
