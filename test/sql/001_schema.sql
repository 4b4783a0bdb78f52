-- The extension installs its objects, callable unqualified.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(27);

SELECT is((SELECT extversion FROM pg_extension WHERE extname = 'flow_engine'),
          (SELECT default_version FROM pg_available_extensions WHERE name = 'flow_engine'),
          'installed version is the control file''s default version');
SELECT ok(current_setting('shared_preload_libraries') LIKE '%flow_engine%',
          'the library is preloaded');

SELECT has_table('flow_definitions');
SELECT has_table('flow_names');
SELECT has_table('flow_runs');
SELECT has_table('flow_run_steps');
SELECT has_table('flow_events');
SELECT has_table('flow_messages');
SELECT has_view('flow_active_runs');
SELECT has_table('flow_providers');
SELECT has_table('flow_tools');
SELECT has_table('flow_secrets');
SELECT has_index('flow_run_steps', 'flow_run_steps_leased', 'running steps are indexed by lease');
SELECT has_index('flow_runs', 'flow_runs_timeout', 'timers are indexed by due time');
SELECT col_is_pk('flow_runs', 'id');
SELECT col_is_pk('flow_run_steps', ARRAY['run_id', 'seq']);
SELECT col_is_pk('flow_events', ARRAY['run_id', 'seq']);
SELECT has_index('flow_runs', 'flow_runs_finished', 'finished runs are indexed for pruning');
SELECT has_index('flow_run_steps', 'flow_run_steps_pending', 'pending steps are indexed by due time');
SELECT has_column('flow_run_steps', 'attempts');
SELECT has_column('flow_run_steps', 'tokens_in');
SELECT has_column('flow_run_steps', 'cost');

-- callable unqualified with the default search_path
SET LOCAL search_path = "$user", public;
SELECT lives_ok($$SELECT * FROM flow_list()$$, 'flow_list() is callable unqualified');
SELECT has_function('flow_execute', ARRAY['text', 'jsonb', 'text', 'text']);
SELECT has_function('flow_send', ARRAY['uuid', 'text', 'jsonb']);
SELECT has_function('flow_cancel', ARRAY['uuid']);

SELECT throws_like($$SET flow_engine.no_such_setting = 1$$,
                   '%invalid configuration parameter name%',
                   'the flow_engine GUC prefix is reserved');

SELECT * FROM finish();
ROLLBACK;
