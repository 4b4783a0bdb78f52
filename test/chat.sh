#!/usr/bin/env bash
# The Node.js chat client (examples/chat) against the throwaway cluster:
# it is driven non-interactively through seed 002's support call, turn by
# turn, and its transcript must be exactly the conversation; the worker's
# replies reach it through LISTEN.  A second journey ends with a human
# handoff.
#
# Sourced by test/run.sh after the cluster and the test HTTP server are up.
# Prints TAP; sets CHAT_PASSED and CHAT_FAILED.
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.sh"
CHAT_PASSED=0
CHAT_FAILED=0

chat_q() { fe_psql -d "$FE_DATABASE" -Atqc "$1" 2>/dev/null; }

# node and the npm pg package (from the npm registry, pinned by package-lock.json)
chat_setup() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        FE_PACKAGES="nodejs npm" fe_install_deps
    fi
    (cd "$FE_ROOT/examples/chat" && npm ci --no-audit --no-fund --silent >/dev/null 2>&1)
}

chat_run() {  # $1 session, $2 input lines; prints the transcript
    printf '%b' "$2" | PGDATABASE="$FE_DATABASE" timeout 60 \
        node "$FE_ROOT/examples/chat/chat.js" --flow support_call --session "$1" \
             --variables '{"name": "Ann"}' --timeout 20000
}

chat_same() { [ "$1" = "$2" ] || { diff <(echo "$2") <(echo "$1") | sed 's/^/# /'; return 1; }; }

chat_test() {
    tap_plan "chat client (examples/chat)"
    local session="chat-$$-$RANDOM" out want
    tap_ok "node and the pg package install" chat_setup
    fe_psql -q -d "$FE_DATABASE" -v status_url="$(chat_q "SELECT current_setting('fe_test.http')")/slow/300" \
        -f "$FE_ROOT/examples/support_call/tools.sql" >/dev/null
    echo "SELECT flow_define(:'f');" | fe_psql -qAt -d "$FE_DATABASE" -v f="$(cat "$FE_ROOT/examples/support_call/flow.json")" >/dev/null

    out=$(chat_run "$session" 'hi\nnot sure\nTechnical: no internet since this morning\nyes\n')
    tap_ok "the client runs the support journey and exits" [ $? = 0 ]
    want="you> hi
bot> Hello Ann, I am the support assistant. Is your issue technical or about billing?
you> not sure
bot> Sorry, I did not catch that. Please say technical or billing.
you> Technical: no internet since this morning
bot> I understand you're having a technical issue. Let me check our system status...
bot> All systems are operational (status 200). Restarting your router usually fixes this. Did that help? (yes/no)
you> yes
bot> Glad I could help. Goodbye!
(the run is completed)"
    tap_ok "its transcript is the conversation, with the worker's reply delivered through LISTEN" chat_same "$out" "$want"
    tap_ok "the run completed, with the answer stored" [ "$(chat_q "SELECT status || ' ' || (context->>'issueCategory') FROM flow_runs WHERE session = '$session'")" = "completed Technical: no internet since this morning" ]
    tap_ok "every turn is in the conversation" [ "$(chat_q "SELECT count(*) FROM flow_messages m JOIN flow_runs r ON r.id = m.run_id WHERE r.session = '$session' AND m.role = 'user'")" = 4 ]

    out=$(chat_run "$session-2" 'hello\nbilling\n')
    tap_ok "a billing issue is transferred to a human, and the client says so" \
        chat_same "$(echo "$out" | tail -2)" "bot> Let me transfer you to a colleague who can help.
(a human has the conversation: billing)"
    tap_done
    CHAT_PASSED=$TAP_PASSED CHAT_FAILED=$TAP_FAILED
}
