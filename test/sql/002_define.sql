-- flow_define, versions, listing, and flow_validate's problem list.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(39);

CREATE FUNCTION pg_temp.def(id text, extra jsonb DEFAULT '{}') RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'id', id, 'initialState', 'start', 'finalStates', jsonb_build_array('done'),
    'states', jsonb_build_object(
      'start', jsonb_build_object('type', 'action',
                 'actions', jsonb_build_array(jsonb_build_object('executor', 'set', 'config', jsonb_build_object('x', 1))),
                 'transitions', jsonb_build_object('always', 'done')),
      'done', jsonb_build_object('type', 'action'))) || extra
$$;


-- problems of a definition as "severity path" strings
CREATE FUNCTION pg_temp.problems(d jsonb) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(severity || ' ' || path ORDER BY path, severity), '{}') FROM flow_validate(d)
$$;

-- versions
SELECT results_eq($$SELECT name, version FROM flow_define(pg_temp.def('t_def'))$$,
                  $$VALUES ('t_def'::text, 1)$$, 'first definition is version 1');
SELECT results_eq($$SELECT name, version FROM flow_define(pg_temp.def('t_def', '{"description": "second"}'))$$,
                  $$VALUES ('t_def'::text, 2)$$, 'defining the same id again makes version 2');
SELECT results_eq($$SELECT latest_version, versions, description FROM flow_list() WHERE name = 't_def'$$,
                  $$VALUES (2, 2::bigint, 'second'::text)$$, 'flow_list shows the latest version and the count');
SELECT is(flow_get('t_def', 1), pg_temp.def('t_def'), 'flow_get fetches a given version');
SELECT is(flow_get('t_def')->>'description', 'second', 'flow_get without a version fetches the latest');
SELECT is(flow_get('t_no_such_flow'), NULL, 'flow_get of an unknown flow is null');
SELECT throws_ok($$UPDATE flow_definitions SET definition = '{}' WHERE name = 't_def'$$,
                 '55000', 'flow definitions are immutable', 'stored versions cannot be changed');
SELECT throws_ok($$DELETE FROM flow_definitions WHERE name = 't_def'$$,
                 '55000', 'flow definitions are immutable', 'stored versions cannot be deleted');

-- a valid definition has no problems
SELECT is_empty($$SELECT * FROM flow_validate(pg_temp.def('t_ok'))$$, 'a valid definition has no problems');

-- each kind of problem, with its path
SELECT is(pg_temp.problems('[1, 2]'), ARRAY['error $'], 'a definition must be an object');
SELECT is(pg_temp.problems(pg_temp.def('t') - 'initialState'), ARRAY['error $.initialState'], 'missing initialState');
SELECT is(pg_temp.problems(pg_temp.def('t', '{"initialState": "nowhere"}')),
          ARRAY['error $.initialState'], 'unknown initialState');
SELECT is(pg_temp.problems(pg_temp.def('t', '{"finalStates": ["done", "gone"]}')),
          ARRAY['error $.finalStates[1]'], 'unknown final state');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,transitions}', '{"always": "mars"}')),
          ARRAY['warning $.states.done', 'error $.states.start.transitions.always'],
          'transition to an unknown state');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,island}', '{"type": "wait", "transitions": {"go": "done"}}')),
          ARRAY['warning $.states.island'], 'unreachable state is a warning');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,transitions}', '{"always": "trap"}')
                           #- '{states,trap}' || '{}' ),
          ARRAY['warning $.states.done', 'error $.states.start.transitions.always'], 'unknown target again');
SELECT is(pg_temp.problems(jsonb_set(jsonb_set(pg_temp.def('t'), '{states,start,transitions}', '{"always": "trap"}'),
                                     '{states,trap}', '{"type": "wait"}')),
          ARRAY['warning $.states.done', 'error $.states.trap'], 'non-final state with no way out');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,actions,0,executor}', '"teleport"')),
          ARRAY['error $.states.start.actions[0].executor'], 'unknown executor');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,conditions}', '[{"expression": "x ===", "event": "always"}]')),
          ARRAY['error $.states.start.conditions[0].expression'], 'condition syntax error');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,actions,0,config}', '{"x": "{{ 1 + }}"}')),
          ARRAY['error $.states.start.actions[0].config.x'], 'template syntax error');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,conditions}', '[{"expression": "true", "event": "nope"}]')),
          ARRAY['error $.states.start.conditions[0].event'], 'condition event without a transition');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,actions}',
            '[{"executor": "respond", "config": {}}, {"executor": "sql", "config": {}},
              {"executor": "http", "config": {}}, {"executor": "llm", "config": {}},
              {"executor": "tool", "config": {}}, {"executor": "set", "config": {}}]')),
          ARRAY['error $.states.start.actions[0].config', 'error $.states.start.actions[1].config',
                'error $.states.start.actions[2].config', 'error $.states.start.actions[3].config',
                'error $.states.start.actions[4].config', 'error $.states.start.actions[5].config'],
          'missing required config keys of each executor');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,actions}',
            '[{"executor": "sql", "config": {"function": "no_such_schema_fn(jsonb)"}}]')),
          ARRAY['warning $.states.start.actions[0].config.function'],
          'an sql function that does not exist yet is a warning');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,actions}',
            '[{"executor": "sql", "config": {"function": "pg_catalog.lower(text)"}}]')),
          ARRAY['error $.states.start.actions[0].config.function'],
          'an sql function with the wrong signature is an error');
SELECT is(pg_temp.problems(jsonb_set(pg_temp.def('t'), '{states,start,actions}',
            '[{"executor": "http", "config": {"url": "http://x", "method": "FETCH", "retry": {"max_attempts": 0}}}]')),
          ARRAY['error $.states.start.actions[0].config.method', 'error $.states.start.actions[0].config.retry.max_attempts'],
          'http config values are checked');

-- the sandbox refuses loops, function definitions and statements
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "(function () { return 1 })()", "event": "always"}]'))) LIKE '%function definitions are not allowed%',
          'function definitions are refused');
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "[1].map(x => x)", "event": "always"}]'))) LIKE '%function definitions are not allowed%',
          'arrow functions are refused');
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,actions,0,config}',
             '{"x": "{{ for (;;) {} }}"}'))) LIKE '%loops are not allowed%',
          'for loops are refused');
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "x\\n while (true) {}", "event": "always"}]'))) LIKE '%loops are not allowed%',
          'while loops after a newline are refused');
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "1); x = (2", "event": "always"}]'))) LIKE '%unbalanced%',
          'escaping the wrapper with an unbalanced bracket is refused');
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "true; false", "event": "always"}]'))) LIKE '%statements are not allowed%',
          'statement separators are refused');
SELECT ok((SELECT message FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "eval(\"1\")", "event": "always"}]'))) LIKE '%eval is not available%',
          'eval is refused');
SELECT is_empty($$SELECT * FROM flow_validate(jsonb_set(pg_temp.def('t'), '{states,start,conditions}',
             '[{"expression": "/[)(]/.test(\"a)\") && x.default !== \"while\" && 10 / 2 > 1", "event": "always"}]'))$$,
          'regular expressions, division, keywords as property names and in strings are fine');

-- flow_define refuses an invalid definition, listing every problem
SELECT throws_ok($$SELECT flow_define(jsonb_set(jsonb_set(pg_temp.def('t_bad'), '{states,start,actions,0,executor}', '"teleport"'),
                                                '{finalStates}', '["done", "gone"]'))$$,
                 '22023', 'definition of flow "t_bad" is not valid', 'flow_define refuses an invalid definition');
SELECT is(pg_temp.error_detail($$SELECT flow_define(jsonb_set(jsonb_set(pg_temp.def('t_bad'), '{states,start,actions,0,executor}', '"teleport"'),
                                                '{finalStates}', '["done", "gone"]'))$$),
          E'2 problems:\n$.states.start.actions[0].executor: Executor "teleport" is unknown; the executors are set, respond, sql, handoff, http, llm, nlu and tool.\n'
          '$.finalStates[1]: Final state "gone" is not a state of the flow.',
          'the detail lists every problem with its path');
SELECT is_empty($$SELECT * FROM flow_names WHERE name = 't_bad'$$, 'nothing is stored for an invalid definition');
SELECT throws_ok($$SELECT flow_define('{"id": "t_bad"}')$$, '22023', NULL, 'an empty definition is refused');
SELECT throws_ok($$SELECT flow_define(pg_temp.def(repeat('x', 64)))$$, '22023', NULL, 'flow names are at most 63 bytes');
SELECT lives_ok($$SELECT flow_define(jsonb_set(pg_temp.def('t_warn'), '{states,island}', '{"type": "wait", "transitions": {"go": "done"}}'))$$,
                'a definition with only warnings is stored');

SELECT * FROM finish();
ROLLBACK;
