# A few TAP helpers for the shell-driven tests (crash.sh, chat.sh).
# tap_plan resets the counters; tap_ok "description" command [args...]
# runs the command and prints ok/not ok; tap_done prints the plan line.
# TAP_PASSED and TAP_FAILED count the current section.

tap_plan() { TAP_N=0; TAP_PASSED=0; TAP_FAILED=0; echo "# $1"; }

tap_ok() {
    local what=$1; shift
    TAP_N=$((TAP_N + 1))
    if "$@"; then
        echo "ok $TAP_N - $what"; TAP_PASSED=$((TAP_PASSED + 1))
    else
        echo "not ok $TAP_N - $what"; TAP_FAILED=$((TAP_FAILED + 1))
    fi
}

tap_done() { echo "1..$TAP_N"; }

# Retry command until it succeeds or $1 seconds pass.
tap_until() {
    local limit=$1 i=0; shift
    until "$@"; do
        i=$((i + 1)); [ $i -gt $((limit * 10)) ] && return 1
        sleep 0.1
    done
}
