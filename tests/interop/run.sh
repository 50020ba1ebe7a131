#!/usr/bin/env bash
# The interop suite in one command: billguard against the Authentik-shaped
# oidc-provider, driven by Debian's Chromium.
#
# 1. installs what a fresh Debian lacks: the npm packages from the lock
#    file (npm ci) and chromium + chromium-driver (apt-get) when missing;
# 2. builds billguard's debug binary (cargo build), unless BILLGUARD_BIN
#    names one;
# 3. starts the provider (twice: claims in the ID token, and in userinfo
#    only) and the echo upstream on loopback ports the OS picks, waiting for
#    each one's READY line;
# 4. runs browser.test.mjs and rollout.test.mjs (which start the billguard
#    instances they need);
# 5. stops every process it started, by PID, whatever happened, and ends with
#    `N passed, M failed`; the exit status is non-zero on any failure.
#
# Screenshots land in tests/interop/artifacts/ (or $INTEROP_ARTIFACTS).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/billguard-interop.XXXXXX")"
export INTEROP_PIDS="$work/pids"
: >"$INTEROP_PIDS"

cleanup() {
  local pid
  while read -r pid; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done <"$INTEROP_PIDS"
  while read -r pid; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done <"$INTEROP_PIDS"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '== %s\n' "$*"; }

# --- 1. what a fresh machine lacks -----------------------------------------

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing nodejs and npm (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null; then
  say "installing chromium and chromium-driver (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
say "npm ci (tests/interop/package-lock.json)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

# --- 2. billguard -----------------------------------------------------------

if [ -z "${BILLGUARD_BIN:-}" ]; then
  say "cargo build (debug)"
  (cd "$root" && cargo build --locked --quiet)
  export BILLGUARD_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/billguard"
fi
say "billguard: $BILLGUARD_BIN"

# --- 3. provider and upstream ----------------------------------------------

# Starts `node <script> <args>` in the background, records its PID, and
# prints the URL of its READY line once it serves.
start_ready() {
  local name="$1"
  shift
  local out="$work/$name.out"
  node "$@" >"$out" 2>"$work/$name.err" &
  local pid=$!
  echo "$pid" >>"$INTEROP_PIDS"
  # Blocks on the process's stdout until the READY line (or its exit).
  local line
  line="$(timeout 60 tail -n +1 -f --pid="$pid" "$out" | grep -m1 "^READY " || true)"
  if [ -z "$line" ]; then
    echo "$name did not start:" >&2
    cat "$work/$name.err" >&2
    return 1
  fi
  echo "${line#READY }"
}

cd "$here"
INTEROP_ISSUER="$(start_ready provider provider.mjs --issuer-host localhost)"
INTEROP_ISSUER_USERINFO="$(start_ready provider-userinfo provider.mjs --issuer-host localhost --claims-in-userinfo-only)"
INTEROP_UPSTREAM="$(start_ready echo echo.mjs)"
export INTEROP_ISSUER INTEROP_ISSUER_USERINFO INTEROP_UPSTREAM
say "provider $INTEROP_ISSUER"
say "provider (claims in userinfo only) $INTEROP_ISSUER_USERINFO"
say "upstream $INTEROP_UPSTREAM"

# --- 4. the browser scenarios ----------------------------------------------

say "browser scenarios (Chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'))"
status=0
node --test --test-concurrency=1 --test-timeout=180000 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$work/tap" \
  browser.test.mjs rollout.test.mjs || status=$?

count() { awk -v k="# $1" '$1" "$2 == k {print $3}' "$work/tap" | tail -1; }
passed="$(count pass)"
failed="$(count fail)"
# A skipped suite counts as one skip (node counts only its tests, of which
# a skipped suite has none).
skipped="$(grep -c '# SKIP' "$work/tap" || true)"
if [ -z "$passed" ] || [ -z "$failed" ]; then
  # The runner died before it could count: that is one failure at least.
  passed="${passed:-0}"
  failed="${failed:-1}"
  status=1
fi
if [ "$status" -ne 0 ]; then
  for name in provider provider-userinfo echo; do
    echo "--- $name stderr" >&2
    tail -n 20 "$work/$name.err" >&2 || true
  done
fi
if [ "${skipped:-0}" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
