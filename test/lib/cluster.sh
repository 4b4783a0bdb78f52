#!/usr/bin/env bash
# Shared by examples/demo.sh, test/run.sh and bench/*.sh: install what is
# missing, build and install flow_engine, and run a throwaway cluster on a
# private socket directory and port.  Source it; do not run it.
#
# Environment knobs:
#   FE_PORT       port of the throwaway cluster (default 54329)
#   FE_CLUSTER    its data and socket directory (default /tmp/flow_engine_cluster)
#   FE_SKIP_APT   set to 1 to skip package installation
#   FE_DATABASE   database the flow_engine worker serves (default postgres)
#   FE_EXTRA_CONF extra postgresql.conf lines for the cluster
#   FE_HTTP_PORT  port of the loopback test HTTP server (default FE_PORT + 11)

set -euo pipefail

FE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FE_PORT=${FE_PORT:-54329}
FE_CLUSTER=${FE_CLUSTER:-/tmp/flow_engine_cluster}
FE_DATABASE=${FE_DATABASE:-postgres}
FE_HTTP_PORT=${FE_HTTP_PORT:-$((FE_PORT + 11))}
FE_HTTP_PID=
FE_PACKAGES="build-essential pkg-config postgresql-15 postgresql-server-dev-15 \
postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl duktape-dev \
libcurl4-openssl-dev curl"
PGBIN=/usr/lib/postgresql/15/bin

fe_log() { printf '==> %s\n' "$*" >&2; }

# Install the Debian packages that are missing (needs root).
fe_install_deps() {
    if [ "${FE_SKIP_APT:-0}" = 1 ]; then return 0; fi
    local missing=()
    for p in $FE_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        fe_log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # do not let the package start its own cluster on the default port
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' RETURN
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

fe_build() {
    fe_log "building flow_engine"
    make -C "$FE_ROOT" -s clean >/dev/null
    make -C "$FE_ROOT" -s
    make -C "$FE_ROOT" -s install >/dev/null
}

# psql against the throwaway cluster, as the postgres superuser.
fe_psql() {
    "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -h "$FE_CLUSTER" -p "$FE_PORT" -U postgres "$@"
}

fe_cluster_stop() {
    if [ -n "$FE_HTTP_PID" ]; then kill "$FE_HTTP_PID" 2>/dev/null || true; FE_HTTP_PID=; fi
    if [ -f "$FE_CLUSTER/data/postmaster.pid" ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$FE_CLUSTER/data" -m immediate stop >/dev/null 2>&1 || true
    fi
}

# Wait (up to $2 seconds) until command $1 succeeds.
fe_wait_for() {
    local cmd=$1 limit=${2:-30} i=0
    until eval "$cmd" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt $((limit * 10)) ]; then return 1; fi
        sleep 0.1
    done
}

# The loopback HTTP server the tests call (test/lib/http_server.py).
fe_http_server_start() {
    fe_log "starting the test HTTP server on 127.0.0.1:$FE_HTTP_PORT"
    python3 "$FE_ROOT/test/lib/http_server.py" "$FE_HTTP_PORT" "$FE_CLUSTER/http.log" \
        >"$FE_CLUSTER/http_server.out" 2>&1 &
    FE_HTTP_PID=$!
    fe_wait_for "curl -sf http://127.0.0.1:$FE_HTTP_PORT/echo" 30 ||
        { echo "the test HTTP server did not start" >&2; return 1; }
    chmod 644 "$FE_CLUSTER/http.log"
}

# A fresh cluster with flow_engine preloaded; stopped on exit.
fe_cluster_start() {
    fe_cluster_stop
    rm -rf "$FE_CLUSTER"
    mkdir -p "$FE_CLUSTER"
    chown postgres:postgres "$FE_CLUSTER"
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    fe_log "starting a throwaway cluster in $FE_CLUSTER on port $FE_PORT"
    runuser -u postgres -- "$PGBIN/initdb" -D "$FE_CLUSTER/data" -U postgres \
        --auth=trust --no-sync >/dev/null
    cat >> "$FE_CLUSTER/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $FE_PORT
unix_socket_directories = '$FE_CLUSTER'
shared_preload_libraries = 'flow_engine'
max_connections = 100
shared_buffers = 256MB
fsync = on
synchronous_commit = on
log_min_messages = warning
flow_engine.database = '$FE_DATABASE'
fe_test.http = 'http://127.0.0.1:$FE_HTTP_PORT'
fe_test.http_log = '$FE_CLUSTER/http.log'
fe_test.server_log = '$FE_CLUSTER/server.log'
${FE_EXTRA_CONF:-}
CONF
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$FE_CLUSTER/data" -l "$FE_CLUSTER/server.log" \
        -w -t 60 start >/dev/null
    trap fe_cluster_stop EXIT
}
