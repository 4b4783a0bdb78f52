# Shared by bench/run.sh and bench/turns.sh: the setup (build, throwaway
# cluster, setup SQL), pgbench runs with per-transaction logs in bench/out,
# and the median latency from those logs.
OUT="$FE_ROOT/bench/out"
SECS=${FE_BENCH_SECONDS:-15}

bench_run() {  # name clients script -> prints tps
    local name=$1 clients=$2 script=$3
    rm -f "$OUT/$name".*   # logs of an earlier run would count in the median
    "$PGBIN/pgbench" -n -h "$FE_CLUSTER" -p "$FE_PORT" -U postgres -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" \
        -T "$SECS" -f "$script" -l --log-prefix="$OUT/$name" postgres 2>/dev/null \
        | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
bench_p50_ms() {  # median latency (ms) of a run, from its pgbench logs
    cat "$OUT/$1".* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]/1000}'
}
bench_setup() {  # sql-file: install, build, start a throwaway cluster, load the setup
    mkdir -p "$OUT"
    fe_install_deps
    fe_build
    fe_cluster_start
    fe_psql -q -d postgres -f "$1" >/dev/null
}
