#!/usr/bin/env bash
# The whole test run (what `npm test` and CI do), on Debian 12 as root:
#   1. system packages (scripts/install-deps.sh: Ceph RGW, NBD tools; fast when present)
#   2. npm ci, build, typecheck, lint
#   3. a throwaway Ceph RGW on loopback (scripts/rgw/start.sh), stopped on exit
#   4. every test under test/unit, test/integration and test/e2e, once, with one runner,
#      HYPER_REQUIRE_TOOLS=1 (a missing tool or S3 endpoint fails instead of skipping)
# A failing build stops the run before the tests (they would run against a stale or partial
# dist/). A failing typecheck or lint step is reported and fails the run, but the tests still
# run so that one broken step does not hide the rest. Exit status: 0 only if everything passed.
# The test layout and the variables the tests read: test/README.md.
# Environment: HYPER_TEST_CONCURRENCY (default 2), HYPER_TEST_TIMEOUT_MS (per test file,
# default 900000), HYPER_SKIP_INSTALL=1 (skip step 1 and npm ci), HYPER_RGW_PORT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export NODE_NO_WARNINGS=${NODE_NO_WARNINGS:-1}

failed=()
step() {
  local name=$1
  shift
  echo "== $name"
  local t0=$SECONDS
  if "$@"; then
    echo "== $name: ok ($((SECONDS - t0)) s)"
  else
    echo "== $name: FAILED ($((SECONDS - t0)) s)"
    failed+=("$name")
    return 1
  fi
}

if [ "${HYPER_SKIP_INSTALL:-}" != 1 ]; then
  step "install system packages" bash scripts/install-deps.sh || { echo "cannot continue without packages"; exit 1; }
  step "npm ci" npm ci --no-audit --no-fund --loglevel=error || { echo "cannot continue without node_modules"; exit 1; }
fi
if ! step "build" npm run -s build; then
  echo "FAILED: build. Not running the tests: they would run against a stale or partial dist/."
  exit 1
fi
step "typecheck" npm run -s typecheck || true
step "lint" npm run -s lint || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hyper-test.XXXXXX")
RGW_DIR="$WORK/rgw"
cleanup() {
  bash scripts/rgw/stop.sh "$RGW_DIR"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! step "start Ceph RGW" bash scripts/rgw/start.sh "$RGW_DIR"; then
  tail -n 30 "$RGW_DIR"/log/*.log 2>/dev/null || true
  exit 1
fi
# shellcheck disable=SC1091
. "$RGW_DIR/env"
export HYPER_REQUIRE_TOOLS=1

mapfile -t files < <(find test/unit test/integration test/e2e -name '*.test.ts' 2>/dev/null | LC_ALL=C sort)
echo "== tests: ${#files[@]} files"
TAP="$WORK/tests.tap"
t0=$SECONDS
node --import tsx --test --test-concurrency="${HYPER_TEST_CONCURRENCY:-2}" \
  --test-timeout="${HYPER_TEST_TIMEOUT_MS:-900000}" \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$TAP" \
  "${files[@]}"
status=$?
echo "== tests: exit $status ($((SECONDS - t0)) s)"
grep -E '^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$TAP" || true
[ "$status" = 0 ] || failed+=("tests")

if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
