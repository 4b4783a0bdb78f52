#!/usr/bin/env bash
# Crash safety of the worker, for real: runs are mid-request on a slow
# loopback endpoint when (1) the worker gets kill -9, and (2) the server
# restarts in immediate mode.  Every run must then finish, each step be
# recorded once, and every re-send carry the step's idempotency key.
# (3) With flow_engine.workers = 2, one worker is terminated on its own: its
# steps are sent again when their leases lapse, the other worker's are not.
#
# Sourced by test/run.sh after the cluster and test HTTP server are up (it
# can also be run alone against them: source test/lib/cluster.sh first).
# Prints TAP; sets CRASH_PASSED and CRASH_FAILED.

source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.sh"
CRASH_PASSED=0
CRASH_FAILED=0

crash_ok() { tap_ok "$@"; }

crash_q() { fe_psql -d "$FE_DATABASE" -Atqc "$1" 2>/dev/null; }

crash_until() { tap_until "$@"; }

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

crash_restart_fast() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$FE_CLUSTER/data" -l "$FE_CLUSTER/server.log" \
        -m fast -w -t 60 restart >/dev/null
}

crash_workers() { echo "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flow_engine worker' AND datname = current_database()"; }

# Two workers, ten requests each on the wire; one is terminated (an orderly
# exit, not a crash: the server and the other worker go on).
crash_two_workers() {
    local tag="two-$$-$RANDOM" runs=20 all keep gone
    all=$(crash_runs "$tag" | sed 's/t_crash/t_crash_lease/')
    crash_q "ALTER SYSTEM SET flow_engine.workers = 2" >/dev/null
    crash_q "ALTER SYSTEM SET flow_engine.max_inflight = 10" >/dev/null
    crash_q "ALTER SYSTEM SET flow_engine.lease_margin = 1000" >/dev/null
    crash_restart_fast
    crash_ok "two workers: both serve the database" crash_until 60 crash_is "$(crash_workers)" 2
    crash_q "SELECT count(*) FROM (SELECT (flow_execute('t_crash_lease', jsonb_build_object('tag', '$tag'))).id
             FROM generate_series(1, $runs)) s" >/dev/null || true
    crash_ok "two workers: $runs requests are on the wire" crash_until 30 crash_sent "$tag" $runs
    crash_ok "two workers: each has ten in flight" crash_until 10 crash_is \
        "SELECT string_agg(query, ',') FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'" \
        "waiting: 10 requests in flight,waiting: 10 requests in flight"
    gone=$(crash_q "SELECT min(pid) FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'")
    keep=$(crash_q "SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'")
    crash_q "SELECT pg_terminate_backend($gone)" >/dev/null
    crash_ok "two workers: the terminated worker is back, the other never left" crash_until 30 crash_is \
        "SELECT count(*) FILTER (WHERE pid = $keep) || '/' || count(*) FILTER (WHERE pid <> $gone)
         FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'" "1/2"
    crash_ok "two workers: all $runs runs complete" \
        crash_until 60 crash_is "$all AND r.status = 'completed' AND r.state = 'done'" $runs
    crash_ok "two workers: the other worker's ten steps were sent once" \
        crash_is "$all AND (SELECT s.attempts FROM flow_run_steps s WHERE s.run_id = r.id AND s.executor = 'http'
                            AND s.status = 'completed') = 1" 10
    crash_ok "two workers: the terminated worker's ten were sent again once their leases lapsed" \
        crash_is "$all AND (SELECT s.attempts FROM flow_run_steps s WHERE s.run_id = r.id AND s.executor = 'http'
                            AND s.status = 'completed') = 2" 10
    crash_ok "two workers: each run's transition after the step is recorded exactly once" \
        crash_is "$all AND (SELECT count(*) FROM flow_events e WHERE e.run_id = r.id AND e.event = 'always') = 1" $runs
    crash_ok "two workers: the ten re-sends carried their steps' idempotency keys" crash_keys "$tag" 10
    crash_q "ALTER SYSTEM RESET flow_engine.workers" >/dev/null
    crash_q "ALTER SYSTEM RESET flow_engine.max_inflight" >/dev/null
    crash_q "ALTER SYSTEM RESET flow_engine.lease_margin" >/dev/null
    crash_restart_fast
    crash_ok "one worker again" crash_until 60 crash_is "$(crash_workers)" 1
}

crash_run() {
    tap_plan "crash safety"
    crash_q "SELECT flow_define(format(\$\$
      {\"id\": \"t_crash\", \"initialState\": \"call\", \"finalStates\": [\"done\", \"bad\"],
       \"states\": {\"call\": {\"actions\": [{\"executor\": \"http\", \"output\": \"resp\",
                      \"config\": {\"url\": \"%s/slow/1500?tag={{ tag }}\", \"timeout_ms\": 10000,
                                 \"retry\": {\"max_attempts\": 5, \"backoff_ms\": 100}}}],
                    \"transitions\": {\"always\": \"done\", \"error\": \"bad\"}},
                  \"done\": {}, \"bad\": {}}}\$\$, current_setting('fe_test.http'))::jsonb)" >/dev/null || true
    crash_q "SELECT flow_define(format(\$\$
      {\"id\": \"t_crash_lease\", \"initialState\": \"call\", \"finalStates\": [\"done\", \"bad\"],
       \"states\": {\"call\": {\"actions\": [{\"executor\": \"http\", \"output\": \"resp\",
                      \"config\": {\"url\": \"%s/slow/1500?tag={{ tag }}\", \"timeout_ms\": 3000,
                                 \"retry\": {\"max_attempts\": 5, \"backoff_ms\": 100}}}],
                    \"transitions\": {\"always\": \"done\", \"error\": \"bad\"}},
                  \"done\": {}, \"bad\": {}}}\$\$, current_setting('fe_test.http'))::jsonb)" >/dev/null || true
    crash_scenario kill9 crash_kill_worker
    crash_scenario immediate crash_restart_immediate
    crash_two_workers
    tap_done
    CRASH_PASSED=$TAP_PASSED CRASH_FAILED=$TAP_FAILED
}
