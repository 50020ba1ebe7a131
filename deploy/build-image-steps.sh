#!/usr/bin/env bash
# The build steps of the container image, as one script: the Dockerfile runs
# exactly this in its build stage, and the tests run it here (there is no
# container engine on the build machines), so what the image contains is
# proven even where the image itself cannot be built.
#
# It builds billguard with the locked dependencies, lays out the runtime
# image's files under OUT (binary and example configuration), and checks the
# result: the binary starts, reads the example configuration, and links only
# against libraries the runtime image (distroless cc, Debian 12) has.
#
# Usage: deploy/build-image-steps.sh --out DIR [--pgo | --binary PATH]
#   --out DIR      where the image's filesystem is laid out (DIR/usr/local/bin/...)
#   --pgo          build with profile-guided optimisation (deploy/pgo-build.sh),
#                  as the Dockerfile and CI do; without it, a plain release build
#   --binary PATH  use this billguard binary instead of building one (tests
#                  pass the one cargo test built)
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
binary=""
pgo=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --pgo) pgo=1; shift ;;
        --binary) binary="$2"; shift 2 ;;
        *) echo "build-image-steps: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$out" ]; then
    echo "build-image-steps: --out DIR is required" >&2
    exit 2
fi

# 1. Build: release profile, dependencies exactly as in Cargo.lock.
if [ -z "$binary" ] && [ -n "$pgo" ]; then
    bash deploy/pgo-build.sh
    binary=target/pgo/billguard
elif [ -z "$binary" ]; then
    cargo build --release --locked --bin billguard
    binary=target/release/billguard
fi

# 2. Lay out the image: the binary and the annotated example configuration
#    (a ConfigMap is mounted over it in Kubernetes).
install -D -m 0755 "$binary" "$out/usr/local/bin/billguard"
install -D -m 0644 config/billguard.toml "$out/etc/billguard/billguard.toml"

# 3. Check: it runs, and the shipped configuration loads once the secrets
#    and the client ID (left to the environment) are given.
"$out/usr/local/bin/billguard" --version
env -i \
    OIDC_CLIENT_ID=image-check \
    OIDC_CLIENT_SECRET=image-check-secret \
    BILLGUARD_SESSION__SECRET=image-check-session-key-of-at-least-32-bytes \
    "$out/usr/local/bin/billguard" config --config "$out/etc/billguard/billguard.toml" >/dev/null

# 4. Check: only the C runtime is needed (glibc, libgcc), which the distroless
#    cc image provides; no OpenSSL.
if command -v ldd >/dev/null; then
    unexpected=$(ldd "$out/usr/local/bin/billguard" | awk '{print $1}' |
        grep -Ev '^(linux-vdso\.so|/lib64/ld-linux|/lib/ld-linux|libc\.so|libm\.so|libgcc_s\.so|libpthread\.so|libdl\.so|librt\.so|ld-linux)' || true)
    if [ -n "$unexpected" ]; then
        echo "build-image-steps: the binary needs libraries the runtime image lacks:" >&2
        echo "$unexpected" >&2
        exit 1
    fi
fi
echo "build-image-steps: image filesystem ready in $out"
