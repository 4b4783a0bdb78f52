-- The upgrade path: install the frozen 0.1.0 script, ALTER EXTENSION ...
-- UPDATE to the current version, and use it.  All in a rolled-back
-- transaction, so the installed extension is left as it was.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(24);

DROP EXTENSION flow_engine CASCADE;
CREATE EXTENSION flow_engine VERSION '0.1.0';
SELECT is((SELECT extversion FROM pg_extension WHERE extname = 'flow_engine'), '0.1.0', '0.1.0 installs from its frozen script');
SELECT hasnt_table('flow_providers', '0.1.0 has no providers table');
SELECT throws_ok($$SELECT flow_execute('t_up')$$, '55000',
  format('extension "flow_engine" is at version 0.1.0, but its library is version %s',
         (SELECT default_version FROM pg_available_extensions WHERE name = 'flow_engine')),
  'the new library refuses an old schema with a clear error');
SELECT is(pg_temp.error_hint($$SELECT flow_execute('t_up')$$), 'Run ALTER EXTENSION flow_engine UPDATE.', 'and says what to do');

-- data stored under 0.1.0 survives the update
INSERT INTO flow_names (name, latest_version) VALUES ('t_up', 1);
INSERT INTO flow_definitions (name, version, definition) VALUES ('t_up', 1,
  '{"id": "t_up", "initialState": "wait", "finalStates": ["done"], "states": {"wait": {"transitions": {"go": "done"}}, "done": {}}}');

ALTER EXTENSION flow_engine UPDATE;
SELECT is((SELECT extversion FROM pg_extension WHERE extname = 'flow_engine'),
          (SELECT default_version FROM pg_available_extensions WHERE name = 'flow_engine'),
          'ALTER EXTENSION UPDATE reaches the default version');
SELECT has_table('flow_providers');
SELECT has_table('flow_tools');
SELECT has_table('flow_secrets');
SELECT has_column('flow_run_steps', 'lease_until');
SELECT has_column('flow_runs', 'timeout_at');
SELECT has_function('flow_worker_wake');
-- 0.2.0 -> 0.3.0: conversations and triggers
SELECT has_column('flow_runs', 'session');
SELECT has_column('flow_runs', 'handoff');
SELECT has_table('flow_dead_letters');
SELECT has_function('flow_process', ARRAY['text', 'text', 'text', 'jsonb']);
SELECT has_function('flow_wait', ARRAY['uuid', 'integer', 'integer']);
SELECT has_function('flow_signal', ARRAY['text', 'text', 'jsonb', 'text']);
SELECT has_view('flow_recent_steps');
SELECT is((SELECT count(*)::int FROM pg_proc WHERE proname = 'flow_execute'), 1,
          'flow_execute has one signature after the update (the session argument was added)');
SELECT set_config('fe.up', id::text, true) AS up FROM flow_execute('t_up') \gset
SELECT is((flow_send(:'up', 'go')).status, 'completed', 'a flow defined under 0.1.0 runs after the update');
SELECT ok(NOT has_table_privilege('public', 'flow_secrets', 'SELECT'), 'PUBLIC cannot read secrets');
SELECT ok(NOT has_table_privilege('public', 'flow_providers', 'SELECT'), 'PUBLIC cannot read provider keys');
SELECT is((flow_process('t_up', 'up-session', 'hello')).session, 'up-session',
          'a flow defined under 0.1.0 serves a session after the update');
-- 0.3.0 -> 0.4.0: a conversation's run is keyed by its session
SELECT is((SELECT key FROM flow_runs WHERE session = 'up-session'), 'up-session',
          'after the update, a session''s run has the session as its key');

SELECT * FROM finish();
ROLLBACK;
