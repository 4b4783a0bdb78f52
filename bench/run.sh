#!/usr/bin/env bash
# Benchmark of the core issue, not a test: pgbench, in one run,
#   (a) flow_execute of a 10-state set/decision flow that completes, and
#   (b) plain SQL doing the same bookkeeping naively (per step one INSERT
#       of a step row and one UPDATE of the run row, in one transaction),
# at 1 and 8 clients.  Reports steps/s (10 steps per run), the ratio
# (a)/(b), and the p50 latency of (a).  Same machine, same cluster, same
# settings, interleaved, so the ratio survives a noisy machine.
#   FE_BENCH_SECONDS  seconds per measurement (default 15)
source "$(dirname "$0")/../test/lib/cluster.sh"
source "$(dirname "$0")/lib.sh"
cd "$FE_ROOT"
bench_setup bench/engine.sql

printf '| clients | (a) flow_execute steps/s | (b) naive SQL steps/s | ratio (a)/(b) | p50 latency of (a) |\n'
printf '|---|---|---|---|---|\n'
for c in 1 8; do
    ta=$(bench_run "a_c$c" "$c" bench/a_flow_execute.pgbench)
    tb=$(bench_run "b_c$c" "$c" bench/b_naive_sql.pgbench)
    awk -v c="$c" -v a="$ta" -v b="$tb" -v p="$(bench_p50_ms "a_c$c")" \
        'BEGIN { printf "| %d | %.0f | %.0f | %.2f | %s ms |\n", c, a*10, b*10, a/b, p }'
done
fe_psql -d postgres -Atc "SELECT 'check: ' || count(*) FILTER (WHERE status = 'completed') || ' runs completed, ' || count(*) FILTER (WHERE status <> 'completed') || ' not' FROM flow_runs"
