#!/usr/bin/env bash
# Crash safety of the worker, for real: runs are mid-request on a slow
# loopback endpoint when (1) the worker gets kill -9, and (2) the server
# restarts in immediate mode.  Every run must then finish, each step be
# recorded once, and every re-send carry the step's idempotency key.
#
# Sourced by test/run.sh after the cluster and test HTTP server are up (it
# can also be run alone against them: source test/lib/cluster.sh first).
# Prints TAP; sets CRASH_PASSED and CRASH_FAILED.

CRASH_PASSED=0
CRASH_FAILED=0
crash_n=0

crash_ok() {  # crash_ok "description" command [args...]
    local what=$1; shift
    crash_n=$((crash_n + 1))
    if "$@"; then
        echo "ok $crash_n - $what"; CRASH_PASSED=$((CRASH_PASSED + 1))
    else
        echo "not ok $crash_n - $what"; CRASH_FAILED=$((CRASH_FAILED + 1))
    fi
}

crash_q() { fe_psql -d "$FE_DATABASE" -Atqc "$1" 2>/dev/null; }

# Retry command until it succeeds or $1 seconds pass.
crash_until() {
    local limit=$1 i=0; shift
    until "$@"; do
        i=$((i + 1)); [ $i -gt $((limit * 10)) ] && return 1
        sleep 0.1
    done
}

crash_is() { [ "$(crash_q "$1")" = "$2" ]; }              # query result equals
crash_runs() { echo "SELECT count(*) FROM flow_runs r WHERE r.flow = 't_crash' AND r.context->>'tag' = '$1'"; }
crash_sent() { [ "$(grep -c "\"path\": \"/slow/1500?tag=$1\"" "$FE_CLUSTER/http.log")" -ge "$2" ]; }

# Re-sends carry the same key: $2 distinct keys, each seen at least twice.
crash_keys() {
    grep "\"path\": \"/slow/1500?tag=$1\"" "$FE_CLUSTER/http.log" |
        sed -n 's/.*"idempotency-key": "\([^"]*\)".*/\1/p' | sort | uniq -c |
        awk -v n="$2" '$1 >= 2 { k++ } END { exit !(k == n) }'
}

crash_kill_worker() {
    kill -9 "$(crash_q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'")"
}

crash_restart_immediate() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$FE_CLUSTER/data" -l "$FE_CLUSTER/server.log" \
        -m immediate -w -t 60 -c restart >/dev/null
}

crash_scenario() {  # $1 = name, $2 = function that crashes
    local tag="$1-$$-$RANDOM" runs=20 all
    all=$(crash_runs "$tag")
    crash_q "SELECT count(*) FROM (SELECT (flow_execute('t_crash', jsonb_build_object('tag', '$tag'))).id
             FROM generate_series(1, $runs)) s" >/dev/null || true
    crash_ok "$1: $runs requests are on the wire" crash_until 30 crash_sent "$tag" $runs
    crash_ok "$1: no run has completed before the crash" crash_is "$all AND r.status = 'completed'" 0
    "$2" || true
    crash_ok "$1: the server is back" crash_until 60 crash_is "SELECT 1" 1
    crash_ok "$1: all $runs runs complete after the restart" \
        crash_until 60 crash_is "$all AND r.status = 'completed' AND r.state = 'done'" $runs
    crash_ok "$1: each run has one http step, completed, sent again after the crash" \
        crash_is "$all AND (SELECT count(*) FROM flow_run_steps s WHERE s.run_id = r.id AND s.executor = 'http'
                            AND s.status = 'completed' AND s.attempts >= 2) = 1" $runs
    crash_ok "$1: each run's transition after the step is recorded exactly once" \
        crash_is "$all AND (SELECT count(*) FROM flow_events e WHERE e.run_id = r.id AND e.event = 'always') = 1" $runs
    crash_ok "$1: every re-send carried its step's idempotency key" crash_keys "$tag" $runs
}

crash_run() {
    echo "# crash safety"
    crash_q "SELECT flow_define(format(\$\$
      {\"id\": \"t_crash\", \"initialState\": \"call\", \"finalStates\": [\"done\", \"bad\"],
       \"states\": {\"call\": {\"actions\": [{\"executor\": \"http\", \"output\": \"resp\",
                      \"config\": {\"url\": \"%s/slow/1500?tag={{ tag }}\", \"timeout_ms\": 10000,
                                 \"retry\": {\"max_attempts\": 5, \"backoff_ms\": 100}}}],
                    \"transitions\": {\"always\": \"done\", \"error\": \"bad\"}},
                  \"done\": {}, \"bad\": {}}}\$\$, current_setting('fe_test.http'))::jsonb)" >/dev/null || true
    crash_scenario kill9 crash_kill_worker
    crash_scenario immediate crash_restart_immediate
    echo "1..$crash_n"
}
