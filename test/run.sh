#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine (as root):
# install what is missing, build, install, start a throwaway cluster with
# flow_engine preloaded (its worker serving contrib_regression) and the
# loopback test HTTP server, then run every test file through pg_regress
# and through pg_prove, then the crash-safety test (kill -9 of the worker,
# immediate restart) and the Node.js chat client driven through a journey.  Ends with pg_prove's summary and a total line
# "N passed, N failed".
export FE_DATABASE=contrib_regression
source "$(dirname "$0")/lib/cluster.sh"
source "$(dirname "$0")/crash.sh"
source "$(dirname "$0")/chat.sh"
cd "$FE_ROOT"

fe_install_deps
make -s versioncheck   # Makefile, control file and META.json agree
fe_build
fe_cluster_start
fe_http_server_start

export PGHOST="$FE_CLUSTER" PGPORT="$FE_PORT" PGUSER=postgres
status=0

fe_log "pg_regress (make installcheck)"
rm -rf results regression.diffs regression.out
if ! make -s installcheck | tee "$FE_CLUSTER/regress.out"; then
    status=1
    [ -f regression.diffs ] && cat regression.diffs
fi
regress_failed=$(sed -n 's/.* \([0-9]*\) of [0-9]* tests failed.*/\1/p' "$FE_CLUSTER/regress.out")
regress_total=$(sed -n 's/.*All \([0-9]*\) tests passed.*/\1/p; s/.* of \([0-9]*\) tests failed.*/\1/p' "$FE_CLUSTER/regress.out")
regress_failed=${regress_failed:-0}; regress_total=${regress_total:-0}

fe_log "crash safety (kill -9 of the worker, immediate restart)"
crash_run
[ "$CRASH_FAILED" = 0 ] || status=1

fe_log "the Node.js chat client"
chat_test
[ "$CHAT_FAILED" = 0 ] || status=1

# pg_prove runs in the database the worker serves (contrib_regression,
# which pg_regress left behind); every test file can run there again.
fe_log "pg_prove"
pg_prove -h "$FE_CLUSTER" -p "$FE_PORT" -U postgres -d "$FE_DATABASE" test/sql/*.sql \
    | tee "$FE_CLUSTER/prove.out" || status=1
prove_total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$FE_CLUSTER/prove.out")
prove_failed=$(sed -n 's/.*Failed \([0-9]*\)\/[0-9]* subtests.*/\1/p' "$FE_CLUSTER/prove.out" | awk '{ s += $1 } END { print s + 0 }')
prove_total=${prove_total:-0}; prove_failed=${prove_failed:-0}
if [ "$status" != 0 ] && [ "$prove_failed" = 0 ] && [ "$CRASH_FAILED" = 0 ] && [ "$CHAT_FAILED" = 0 ] &&
   [ "$regress_failed" = 0 ]; then
    prove_failed=1   # a file died without reporting subtests
fi

passed=$(( (regress_total - regress_failed) + (prove_total - prove_failed) + CRASH_PASSED + CHAT_PASSED ))
failed=$(( regress_failed + prove_failed + CRASH_FAILED + CHAT_FAILED ))
echo "pg_regress files: $((regress_total - regress_failed))/$regress_total; pg_prove assertions: $((prove_total - prove_failed))/$prove_total; crash assertions: $CRASH_PASSED/$((CRASH_PASSED + CRASH_FAILED)); chat client assertions: $CHAT_PASSED/$((CHAT_PASSED + CHAT_FAILED))"
echo "$passed passed, $failed failed"
exit $status
