-- The caller's transaction rules: rollback, NOTIFY at commit, and two
-- sessions sending to one run.  This file commits, so it runs outside a
-- transaction and uses flow names of its own.
\i test/lib/prelude.sql
SELECT plan(15);

SELECT dblink_connect('listener', pg_temp.connstr()) \gset
SELECT dblink_exec('listener', 'LISTEN flow_engine') \gset

SELECT flow_define($${
  "id": "t_tx", "initialState": "start", "finalStates": ["done"],
  "states": {
    "start": {"type": "action", "transitions": {"always": "mid"}},
    "mid": {"type": "action", "actions": [{"executor": "set", "config": {"log": []}}], "transitions": {"always": "w"}},
    "w": {"type": "wait", "transitions": {"msg": "append", "stop": "done"}},
    "append": {"type": "action", "actions": [{"executor": "set", "config": {"log": "{{ log.concat([event.n]) }}"}}],
               "transitions": {"always": "w"}},
    "done": {}
  }}$$) \gset

-------------------------------------------------------------------------------
-- one NOTIFY per committed transition
-------------------------------------------------------------------------------
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_tx') \gset
SELECT is(pg_temp.wait_notes(:'r', 3), 3, 'a committed run sends one notification per transition');
SELECT is((SELECT array_agg((payload->>'event') || '>' || (payload->>'state') || ':' || (payload->>'status') ORDER BY (payload->>'seq')::int)
             FROM fe_notes WHERE payload->>'run' = :'r'),
  ARRAY['start>start:running', 'always>mid:running', 'always>w:waiting'], 'payloads carry event, state and status, the last one final');
SELECT is((SELECT DISTINCT payload->>'flow' FROM fe_notes WHERE payload->>'run' = :'r'), 't_tx', 'payloads carry the flow');

-------------------------------------------------------------------------------
-- rollback: nothing of the run exists, and nothing is notified
-------------------------------------------------------------------------------
BEGIN;
SELECT id AS rolled FROM flow_execute('t_tx') \gset
SELECT id AS rolled_sent FROM flow_send(:'r', 'msg', '{"n": 99}') \gset
ROLLBACK;
SELECT is((SELECT count(*)::int FROM flow_runs WHERE id = :'rolled'), 0, 'a rolled-back flow_execute leaves no run');
SELECT is((SELECT count(*)::int FROM flow_run_steps WHERE run_id = :'rolled') + (SELECT count(*)::int FROM flow_events WHERE run_id = :'rolled'),
  0, 'and no steps or events');
SELECT results_eq(format($$SELECT status, state, context->'log' FROM flow_run(%L)$$, :'r'),
  $$VALUES ('waiting'::text, 'w'::text, '[]'::jsonb)$$, 'a rolled-back flow_send leaves the run as it was');
SELECT set_config('fe.marker', id::text, false) AS marker FROM flow_execute('t_tx') \gset
SELECT is(pg_temp.wait_notes(:'marker', 3), 3, 'a later committed run is notified');
SELECT is((SELECT count(*)::int FROM fe_notes WHERE payload->>'run' = :'rolled'), 0, 'the rolled-back run was never notified');
SELECT is((SELECT count(*)::int FROM fe_notes WHERE payload->>'run' = :'r'), 3, 'nor the rolled-back send');

-------------------------------------------------------------------------------
-- two sessions send to one run at once: they serialise, none is lost
-------------------------------------------------------------------------------
SELECT dblink_connect('holder', pg_temp.connstr()) \gset
SELECT dblink_connect('a', pg_temp.connstr()) \gset
SELECT dblink_connect('b', pg_temp.connstr()) \gset
SELECT dblink_exec('holder', 'BEGIN') \gset
SELECT x AS locked FROM dblink('holder', format('SELECT 1 FROM flow_runs WHERE id = %L FOR UPDATE', :'r')) AS t(x int) \gset
SELECT dblink_send_query('a', format($$SELECT status FROM flow_send(%L, 'msg', '{"n": 1}')$$, :'r')) \gset
SELECT dblink_send_query('b', format($$SELECT status FROM flow_send(%L, 'msg', '{"n": 2}')$$, :'r')) \gset
SELECT is(pg_temp.wait_blocked(2, '%flow_send%'), 2, 'both senders wait for the run''s row lock');
SELECT dblink_exec('holder', 'COMMIT') \gset
SELECT is((SELECT status FROM dblink_get_result('a') AS t(status text)), 'waiting', 'the first sender completes');
SELECT is((SELECT status FROM dblink_get_result('b') AS t(status text)), 'waiting', 'the second sender completes');
SELECT is((SELECT (SELECT array_agg(x::int ORDER BY x::int) FROM jsonb_array_elements_text(context->'log') x) FROM flow_runs WHERE id = :'r'),
  ARRAY[1, 2], 'both events were applied, neither lost');
SELECT is((SELECT count(*)::int FROM flow_events WHERE run_id = :'r' AND event = 'msg' AND status = 'consumed'), 2,
  'both events are recorded');
SELECT is(pg_temp.wait_notes(:'r', 7), 7, 'and each committed transition was notified');

SELECT dblink_disconnect('a') \gset
SELECT dblink_disconnect('b') \gset
SELECT dblink_disconnect('holder') \gset
SELECT dblink_disconnect('listener') \gset
SELECT count(flow_cancel(id)) AS cancelled FROM flow_runs WHERE flow = 't_tx' AND status = 'waiting' \gset
SELECT * FROM finish();
