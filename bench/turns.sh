#!/usr/bin/env bash
# Benchmark of the turn API (issue 4), not a test: pgbench, in one run,
#   (c) one flow_process() call per turn against 1,000 live conversations of
#       a flow that stores the message, answers it (set + respond), records
#       the transition and notifies, and
#   (d) the same bookkeeping done by the application itself: lock the
#       session row, insert the user message, update the session, insert the
#       reply, NOTIFY, in one transaction of six statements,
# at 1 and 8 clients.  Reports turns/s, the ratio (c)/(d) and both p50
# latencies.  Same cluster and settings, interleaved, so the ratio survives
# a noisy machine.
#   FE_BENCH_SECONDS  seconds per measurement (default 15)
source "$(dirname "$0")/../test/lib/cluster.sh"
source "$(dirname "$0")/lib.sh"
cd "$FE_ROOT"
bench_setup bench/turns.sql

printf '| clients | (c) flow_process turns/s | (d) app bookkeeping turns/s | ratio (c)/(d) | p50 of (c) | p50 of (d) |\n'
printf '|---|---|---|---|---|---|\n'
for c in 1 8; do
    tc=$(bench_run "c_c$c" "$c" bench/c_flow_process.pgbench)
    td=$(bench_run "d_c$c" "$c" bench/d_app_turn.pgbench)
    awk -v c="$c" -v a="$tc" -v b="$td" -v pa="$(bench_p50_ms "c_c$c")" -v pb="$(bench_p50_ms "d_c$c")" \
        'BEGIN { printf "| %d | %.0f | %.0f | %.2f | %s ms | %s ms |\n", c, a, b, a/b, pa, pb }'
done
fe_psql -d postgres -Atc "SELECT 'check: ' || count(*) || ' conversations, ' || sum(n) || ' messages, every run waiting: ' || bool_and(status = 'waiting')
                            FROM (SELECT r.status, (SELECT count(*) FROM flow_messages m WHERE m.run_id = r.id) AS n
                                    FROM flow_runs r WHERE r.flow = 'bench_chat') x"
