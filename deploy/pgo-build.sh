#!/usr/bin/env bash
# Builds the release binary with profile-guided optimisation: an
# instrumented build serves a short, fixed workload on loopback, and the
# counts it records steer the final build's inlining and code layout. On
# the proxied request path this takes about 30% of the instructions off
# every request (README, "Performance"). The container image ships this
# build.
#
# The workload is what a running billguard spends its time on: requests
# with a valid session proxied to an app (small answers and a 100 KiB one),
# requests without a session (refused or sent to sign in), form posts, and
# local sign-ins. The app is nginx answering from memory, load comes from
# wrk, sign-ins from curl; all three are installed from Debian's packages
# when missing, and llvm-profdata from rustup's llvm-tools component.
#
# Usage: deploy/pgo-build.sh [--out PATH]
#   --out PATH   also copy the binary there (default: only
#                target/pgo/billguard)
# Work files stay in target/pgo: the two builds' target directories (so
# the plain release build in target/release is left alone), the raw
# counts, the merged profile and the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) echo "pgo-build: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "pgo-build: $*" >&2; }

# 1. Tools.
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    say "installing rustup's llvm-tools component (llvm-profdata)"
    rustup component add llvm-tools
fi
if [ ! -x "$profdata" ]; then
    say "llvm-profdata is not at $profdata after installing llvm-tools"
    exit 1
fi

work="$PWD/target/pgo"
raw="$work/raw"
run="$work/run"
rm -rf "$raw" "$run"
mkdir -p "$raw" "$run/www" "$run/upstream-tmp"

# 2. The instrumented build.
say "instrumented build"
RUSTFLAGS="-Cprofile-generate=$raw" \
    cargo build --release --locked --bin billguard --target-dir "$work/generate"
instrumented="$work/generate/release/billguard"

# 3. The workload, on loopback ports that nothing answers on.
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

free_port() {
    local port
    for port in $(seq "$1" $(($1 + 200))); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    say "no free loopback port from $1"
    exit 1
}
app_port="$(free_port 28180)"
proxy_port="$(free_port $((app_port + 1)))"

head -c 102400 /dev/urandom >"$run/www/big.bin"
sed -e "s|{{DIR}}|$run|g" -e "s|{{PORT}}|$app_port|g" \
    benches/conf/upstream-nginx.conf >"$run/upstream.conf"
"$nginx_bin" -c "$run/upstream.conf" -p "$run" -g "daemon off;" &
pids+=($!)

password="pgo-training-password"
hash="$(printf '%s' "$password" | "$instrumented" hash-password)"
cat >"$run/users.toml" <<EOF
[[users]]
username = "trainer"
role = "admin"
password_hash = "$hash"
EOF
cat >"$run/billguard.toml" <<EOF
listen = "127.0.0.1:$proxy_port"
upstream = "http://127.0.0.1:$app_port"
[session]
secret = "pgo-training-session-secret-0123456789abcdef"
[local_login]
enabled = true
users_file = "$run/users.toml"
EOF
env -i PATH="$PATH" "$instrumented" --config "$run/billguard.toml" serve \
    >"$run/billguard.log" 2>&1 &
billguard_pid=$!
pids+=("$billguard_pid")

base="http://127.0.0.1:$proxy_port"
ready=""
for _ in $(seq 100); do
    if curl -sf -o /dev/null "$base/_billguard/ready"; then ready=1; break; fi
    if ! kill -0 "$billguard_pid" 2>/dev/null; then break; fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    say "the instrumented billguard did not become ready; its log:"
    cat "$run/billguard.log" >&2
    exit 1
fi

# A local sign-in as a browser makes it: the form, then the post with the
# form's CSRF token; prints the session cookie as `name=value`.
sign_in() {
    local jar page csrf
    jar="$(mktemp "$run/jar.XXXXXX")"
    page="$(curl -sf -c "$jar" -b "$jar" "$base/_billguard/sign_in?rd=/")"
    csrf="$(printf '%s' "$page" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)"
    curl -sf -o /dev/null -c "$jar" -b "$jar" \
        --data-urlencode username=trainer --data-urlencode "password=$password" \
        --data-urlencode "csrf=$csrf" --data-urlencode rd=/ "$base/_billguard/sign_in"
    sed 's/^#HttpOnly_//' "$jar" | awk 'NF >= 7 && $6 ~ /billguard_session/ {print $6 "=" $7}'
    rm -f "$jar"
}

say "training workload on $base"
cookie="$(sign_in)"
if [ -z "$cookie" ]; then
    say "the training sign-in got no session cookie; billguard's log:"
    cat "$run/billguard.log" >&2
    exit 1
fi
for _ in $(seq 20); do sign_in >/dev/null; done
cat >"$run/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = "payee=Power+Co&amount=42.00&due=2026-12-31"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
EOF
load() { wrk -t1 --timeout 5s "$@" | awk '/Requests\/sec/ {print "  " $2 " requests/s"}' >&2; }
load -c50 -d8s -H "Cookie: $cookie" "$base/small"
load -c8 -d2s -H "Cookie: $cookie" "$base/big"
load -c8 -d1s -s "$run/post.lua" -H "Cookie: $cookie" "$base/bills"
load -c8 -d1s "$base/small"
load -c8 -d1s -H "Accept: text/html" "$base/bills"

# The counts are written when the process exits.
kill -TERM "$billguard_pid"
wait "$billguard_pid" || true
stop_all
trap - EXIT
if ! compgen -G "$raw/*.profraw" >/dev/null; then
    say "the instrumented billguard wrote no profile to $raw"
    exit 1
fi

# 4. The optimised build.
"$profdata" merge -o "$work/billguard.profdata" "$raw"
say "optimised build"
RUSTFLAGS="-Cprofile-use=$work/billguard.profdata" \
    cargo build --release --locked --bin billguard --target-dir "$work/use"
install -m 0755 "$work/use/release/billguard" "$work/billguard"
if [ -n "$out" ]; then
    install -D -m 0755 "$work/billguard" "$out"
fi
say "done: $work/billguard"
