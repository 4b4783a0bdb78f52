#!/usr/bin/env bash
# Benchmark of the worker (issue 3), not a test.  In one run, against one
# local nginx (Debian package, started here on 127.0.0.1):
#   (a) ceiling: wrk against nginx, the same endpoint the flows call;
#   (b) throughput: 10,000 runs, each one http step against nginx and then
#       completing, queued by one committed transaction; tool steps/s is
#       counted from just before that commit to the last run's finish;
#   (c) latency: 300 runs committed one at a time; commit -> request on the
#       wire (the step's timings.sent_at, from curl's pretransfer time, minus
#       the clock just before COMMIT), p50 and p99.
#   FE_BENCH_RUNS   runs in (b) (default 10000)
#   FE_BENCH_WORKERS values of flow_engine.workers to measure (b) and (c)
#                    with, in one run (default "1 2")
#   FE_BENCH_PERF   if set, a file: perf record -g of the worker during (b)
export FE_PORT=${FE_PORT:-54341} FE_CLUSTER=${FE_CLUSTER:-/tmp/flow_engine_bench} FE_DATABASE=postgres
source "$(dirname "$0")/../test/lib/cluster.sh"
cd "$FE_ROOT"
RUNS=${FE_BENCH_RUNS:-10000}
WORKERS=${FE_BENCH_WORKERS:-1 2}
NGINX_PORT=$((FE_PORT + 20))
FE_PACKAGES="$FE_PACKAGES nginx-light wrk"

fe_install_deps
fe_build
fe_cluster_start

# nginx: one worker process, keep-alive, a small JSON answer
mkdir -p "$FE_CLUSTER/nginx"
cat > "$FE_CLUSTER/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $FE_CLUSTER/nginx/nginx.pid;
error_log $FE_CLUSTER/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { default_type application/json; return 200 '{"ok": true}'; }
  }
}
CONF
nginx -c "$FE_CLUSTER/nginx/nginx.conf" -p "$FE_CLUSTER/nginx"
trap 'nginx -c "$FE_CLUSTER/nginx/nginx.conf" -p "$FE_CLUSTER/nginx" -s stop 2>/dev/null; fe_cluster_stop' EXIT
URL="http://127.0.0.1:$NGINX_PORT/tool"
fe_wait_for "curl -sf $URL" 10

fe_psql -q -d postgres <<SQL >/dev/null
CREATE EXTENSION IF NOT EXISTS flow_engine;
SELECT flow_define('{"id": "bench_http", "initialState": "call", "finalStates": ["done", "bad"],
  "states": {"call": {"actions": [{"executor": "http", "config": {"url": "$URL", "timeout_ms": 30000}}],
                      "transitions": {"always": "done", "error": "bad"}},
             "done": {}, "bad": {}}}');
SQL

fe_log "(a) wrk ceiling"
ceiling=$(wrk -t1 -c32 -d5s "$URL" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')

# (b) and (c) with flow_engine.workers = $1; sets the globals tput_$1, secs_$1,
# done_$1, failed_$1, p50_$1 and p99_$1.
measure() {
    local w=$1 perf_pid=
    fe_psql -q -d postgres -c "ALTER SYSTEM SET flow_engine.workers = $w" >/dev/null
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$FE_CLUSTER/data" -l "$FE_CLUSTER/server.log" \
        -m fast -w -t 60 restart >/dev/null
    fe_wait_for "[ \"\$(fe_psql -d postgres -Atc \"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'\")\" = $w ]" 30 ||
        fe_log "the $w workers did not start"
    fe_log "(b) $RUNS runs, one http step each, $w worker(s)"
    fe_psql -q -d postgres -c "TRUNCATE flow_runs, flow_run_steps, flow_events, flow_messages" >/dev/null
    if [ -n "${FE_BENCH_PERF:-}" ]; then
        wpid=$(fe_psql -d postgres -Atc "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'")
        perf record -g -o "$FE_BENCH_PERF" -p "$wpid" 2>/dev/null &
        perf_pid=$!
    fi
    fe_psql -q -d postgres >/dev/null <<SQL
    BEGIN;
    SELECT count(flow_execute('bench_http')) FROM generate_series(1, $RUNS);
    CREATE TEMP TABLE t0 ON COMMIT PRESERVE ROWS AS SELECT clock_timestamp() AS t0;
    CREATE TABLE IF NOT EXISTS bench_t0 (t0 timestamptz);
    TRUNCATE bench_t0;
    INSERT INTO bench_t0 SELECT t0 FROM t0;
    COMMIT;
SQL
    fe_wait_for "[ \"\$(fe_psql -d postgres -Atc \"SELECT count(*) FROM flow_runs WHERE status <> 'running'\")\" = $RUNS ]" 300 ||
        fe_log "not every run finished"
    if [ -n "${perf_pid:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    read -r done_runs failed secs steps_per_s <<<"$(fe_psql -d postgres -Atc "
      SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state <> 'done'),
             round(extract(epoch FROM max(finished_at) - (SELECT t0 FROM bench_t0))::numeric, 3),
             round(count(*) FILTER (WHERE state = 'done') / extract(epoch FROM max(finished_at) - (SELECT t0 FROM bench_t0))::numeric)
      FROM flow_runs" | tr '|' ' ')"

    fe_log "(c) commit -> wire latency, 300 runs one at a time, $w worker(s)"
    fe_psql -q -d postgres -c "TRUNCATE flow_runs, flow_run_steps, flow_events, flow_messages" >/dev/null
    for i in $(seq 1 300); do
        printf "BEGIN;\nSELECT flow_execute('bench_http', jsonb_build_object('t0', clock_timestamp()));\nCOMMIT;\nSELECT pg_sleep(0.01);\n"
    done | fe_psql -q -d postgres >/dev/null
    fe_wait_for "[ \"\$(fe_psql -d postgres -Atc \"SELECT count(*) FROM flow_runs WHERE status <> 'running'\")\" = 300 ]" 60
    read -r p50 p99 <<<"$(fe_psql -d postgres -Atc "
      SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3),
             round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3)
      FROM (SELECT extract(epoch FROM (s.output->'timings'->>'sent_at')::timestamptz
                                  - (r.context->>'t0')::timestamptz) * 1000 AS ms
            FROM flow_runs r JOIN flow_run_steps s ON s.run_id = r.id AND s.executor = 'http') x" | tr '|' ' ')"
    eval "tput_$w=\$steps_per_s secs_$w=\$secs done_$w=\$done_runs failed_$w=\$failed p50_$w=\$p50 p99_$w=\$p99"
}

for w in $WORKERS; do
    measure "$w"
done

echo
echo "| measurement | figure |"
echo "|---|---|"
echo "| (a) wrk -t1 -c32 against nginx (ceiling) | ${ceiling} requests/s |"
for w in $WORKERS; do
    eval "t=\$tput_$w s=\$secs_$w d=\$done_$w f=\$failed_$w p50=\$p50_$w p99=\$p99_$w"
    echo "| (b) $RUNS runs, one http step each, $w worker(s): end to end | $t tool steps/s ($s s; $d done, $f not) |"
    awk -v a="$t" -v c="$ceiling" -v w="$w" 'BEGIN { printf "| (b) / (a), %d worker(s) | %.3f of the nginx ceiling |\n", w, a / c }'
    echo "| (c) commit -> request on the wire, $w worker(s), p50 | $p50 ms |"
    echo "| (c) commit -> request on the wire, $w worker(s), p99 | $p99 ms |"
done
first=${WORKERS%% *} last=${WORKERS##* }
if [ "$first" != "$last" ]; then
    eval "a=\$tput_$last b=\$tput_$first"
    awk -v a="$a" -v b="$b" -v l="$last" -v f="$first" 'BEGIN { printf "| (b) %d workers / %d worker(s) | %.2f |\n", l, f, a / b }'
fi
