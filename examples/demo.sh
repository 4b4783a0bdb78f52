#!/usr/bin/env bash
# The quick-start demo: on a fresh Debian machine (as root), install what is
# missing, build and install flow_engine, start a throwaway cluster, and run
# the food-order conversation, printing each turn and every transition.
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
\echo '--- a WhatsApp food order, one turn per flow_send ---'
SELECT id AS run FROM flow_execute('food_order', '{"customer_name": "Asha"}', '+919800000001') \gset
SELECT 'bot' AS who, response AS says, state, status FROM flow_run(:'run');
SELECT 'user: dosa' AS who, response AS says, state, status FROM flow_send(:'run', 'user_message', '{"text": "dosa"}');
SELECT 'user: masala dosa + idli' AS who, response AS says, state, status FROM flow_send(:'run', 'user_selects', '{"items": ["masala dosa", "idli"]}');
SELECT 'user: FC Road' AS who, response AS says, state, status FROM flow_send(:'run', 'address_given', '{"address": {"line": "FC Road", "latitude": 18.53, "longitude": 73.84}}');
SELECT 'user: yes, cash' AS who, response AS says, state, status FROM flow_send(:'run', 'user_confirms', '{"method": "cod"}');

\echo
\echo '--- every transition of the run (flow_events) ---'
SELECT seq, event, source, coalesce(from_state, '') AS "from", to_state AS "to" FROM flow_events WHERE run_id = :'run' ORDER BY seq;

\echo
\echo '--- the steps it executed (flow_run_steps) ---'
SELECT seq, state, phase, executor, status, round(extract(epoch FROM finished_at - started_at) * 1000, 3) AS ms
  FROM flow_run_steps WHERE run_id = :'run' ORDER BY seq;

\echo
\echo '--- the order row written by the sql step, in the same transaction ---'
SELECT order_id, items, payment, total FROM food_orders;
SQL
fe_log "demo finished; the cluster in $FE_CLUSTER is $( [ "${FE_KEEP:-0}" = 1 ] && echo "still running (psql -h $FE_CLUSTER -p $FE_PORT -U postgres)" || echo stopped)"
