#!/usr/bin/env bash
# The billguard load benchmark (README, "Performance"): billguard against
# nginx as a plain reverse proxy and Apache httpd + mod_auth_openidc, all on
# loopback in front of the same nginx upstream, with sessions from real
# logins at the test provider. Not part of CI: the numbers depend on the
# machine and how busy it is.
#
#   benches/run.sh                      # the full run (a few minutes)
#   benches/run.sh --duration 2 --repeats 1 --scenarios c50
#   benches/run.sh --help               # every option
#
# Installs what is missing (Debian packages, the provider's npm packages),
# builds billguard as the image does (deploy/pgo-build.sh), then hands over
# to benches/lib/bench.mjs.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v apache2 >/dev/null || missing+=(apache2)
[[ -e /usr/lib/apache2/modules/mod_auth_openidc.so ]] || missing+=(libapache2-mod-auth-openidc)
command -v wrk >/dev/null || missing+=(wrk)
command -v node >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]}" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The test provider's packages, exactly as locked.
if [[ ! -d tests/interop/node_modules ]]; then
    (cd tests/interop && npm ci --no-audit --no-fund)
fi

# The build the container image ships: release, profile-guided.
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    bash deploy/pgo-build.sh
fi

exec node benches/lib/bench.mjs "$@"
