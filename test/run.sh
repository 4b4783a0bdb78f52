#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine (as root):
# install what is missing, build, install, start a throwaway cluster with
# flow_engine preloaded, then run every test file through pg_regress and
# through pg_prove.  Ends with pg_prove's summary.
source "$(dirname "$0")/lib/cluster.sh"
cd "$FE_ROOT"

fe_install_deps
make -s versioncheck   # Makefile, control file and META.json agree
fe_build
fe_cluster_start

export PGHOST="$FE_CLUSTER" PGPORT="$FE_PORT" PGUSER=postgres
status=0

fe_log "pg_regress (make installcheck)"
rm -rf results regression.diffs regression.out
if ! make -s installcheck; then
    status=1
    [ -f regression.diffs ] && cat regression.diffs
fi

fe_log "pg_prove"
fe_psql -d postgres -qc "DROP DATABASE IF EXISTS fe_prove" -c "CREATE DATABASE fe_prove" >/dev/null
pg_prove -h "$FE_CLUSTER" -p "$FE_PORT" -U postgres -d fe_prove test/sql/*.sql || status=1

exit $status
