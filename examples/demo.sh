#!/usr/bin/env bash
# The quick-start demo: on a fresh Debian machine (as root), install what is
# missing, build and install flow_engine, start a throwaway cluster, and run
# the food-order conversation (seed 001) through flow_process(), printing
# each turn, every transition and step, and the order row it wrote.
# FE_KEEP=1 leaves the cluster running afterwards.
source "$(dirname "$0")/../test/lib/cluster.sh"
cd "$FE_ROOT"

fe_install_deps
fe_build
fe_cluster_start
if [ "${FE_KEEP:-0}" = 1 ]; then trap - EXIT; fi

fe_psql -q -d postgres <<'SQL'
\set QUIET 1
SET client_min_messages = warning;
CREATE EXTENSION flow_engine;
\i examples/food_order/tools.sql
\set food_flow `cat examples/food_order/flow.json`
SELECT format('defined flow %s, version %s', name, version) AS " " FROM flow_define(:'food_flow');

\pset footer off
\echo
\echo '--- a WhatsApp food order: one flow_process() call per message ---'
CREATE TEMP TABLE chat (n serial, who text, says text, state text, status text);
CREATE FUNCTION pg_temp.turn(input text, vars jsonb DEFAULT NULL) RETURNS void LANGUAGE sql AS $$
  INSERT INTO chat (who, says) VALUES ('user', input);
  INSERT INTO chat (who, says, state, status)
  SELECT 'bot', array_to_string(t.responses, E'\n'), t.state, t.status
    FROM flow_process('food_order', '+919800000001', input, vars) t;
$$;
SELECT pg_temp.turn('I want to order food', '{"customer_name": "Asha"}');
SELECT pg_temp.turn('dosa');
SELECT pg_temp.turn('1 and 2');
SELECT pg_temp.turn('12 FC Road');
SELECT pg_temp.turn('online');
-- the payment provider's webhook marks the payment captured: a trigger on
-- food_payments sends payment_captured to the conversation's run
UPDATE food_payments SET status = 'captured' WHERE phone = '+919800000001';
INSERT INTO chat (who, says, state, status)
SELECT 'bot', response, state, status FROM flow_runs WHERE session = '+919800000001';
SELECT who, says, coalesce(state, '') AS state, coalesce(status, '') AS status FROM chat ORDER BY n;
SELECT id AS run FROM flow_runs WHERE session = '+919800000001' \gset

\echo
\echo '--- every transition of the run (flow_events) ---'
SELECT seq, event, source, coalesce(from_state, '') AS "from", to_state AS "to" FROM flow_events WHERE run_id = :'run' ORDER BY seq;

\echo
\echo '--- the steps it executed (flow_run_steps) ---'
SELECT seq, state, phase, executor, status, round(extract(epoch FROM finished_at - started_at) * 1000, 3) AS ms
  FROM flow_run_steps WHERE run_id = :'run' ORDER BY seq;

\echo
\echo '--- the order row, written by the sql step in the payment's transaction ---'
SELECT order_id, items, address, payment, total FROM food_orders;
SQL
fe_log "demo finished; the cluster in $FE_CLUSTER is $( [ "${FE_KEEP:-0}" = 1 ] && echo "still running (psql -h $FE_CLUSTER -p $FE_PORT -U postgres)" || echo stopped)"
