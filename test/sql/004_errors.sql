-- Bad input gets a clear error, and failing runs are recorded, never lost.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(33);


SELECT flow_define($${
  "id": "t_err", "initialState": "ask", "finalStates": ["done"],
  "states": {
    "ask": {"type": "wait", "transitions": {"answer": "done", "skip": "done"}},
    "done": {}
  }}$$) \gset

-- API misuse raises, with an errcode
SELECT throws_ok($$SELECT flow_execute('t_no_such_flow')$$, '42704', 'flow "t_no_such_flow" does not exist', 'unknown flow');
SELECT throws_ok($$SELECT flow_execute('t_err', '[1, 2]')$$, '22023', 'input of flow "t_err" must be a JSON object', 'input that is an array');
SELECT throws_ok($$SELECT flow_execute('t_err', '"text"')$$, '22023', 'input of flow "t_err" must be a JSON object', 'input that is a scalar');
SELECT throws_ok($$SELECT flow_execute(NULL)$$, '22004', 'argument "flow" must not be null', 'null flow');
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_err') \gset
SELECT throws_ok($$SELECT flow_send(current_setting('fe.run')::uuid, 'bogus')$$, '22023',
  'state "ask" of flow "t_err" does not accept event "bogus"', 'an event the state does not accept');
SELECT is(pg_temp.error_detail($$SELECT flow_send(current_setting('fe.run')::uuid, 'bogus')$$),
  'It accepts: skip, answer.', 'the error lists the events the state accepts');
SELECT throws_ok($$SELECT flow_send(current_setting('fe.run')::uuid, NULL)$$, '22004', 'argument "event" must not be null', 'null event');
SELECT throws_ok($$SELECT flow_send('00000000-0000-4000-8000-000000000000', 'answer')$$, '42704',
  'flow run 00000000-0000-4000-8000-000000000000 does not exist', 'unknown run');
SELECT is((flow_send(:'r', 'answer')).status, 'completed', 'the run completes');
SELECT throws_like($$SELECT flow_send(current_setting('fe.run')::uuid, 'answer')$$,
  'cannot send event "answer" to flow run %', 'sending to a finished run');
SELECT is(pg_temp.error_detail($$SELECT flow_send(current_setting('fe.run')::uuid, 'answer')$$),
  'The run of flow "t_err" is completed, in state "done".', 'the detail says why');
SELECT throws_ok($$SELECT flow_cancel(current_setting('fe.run')::uuid)$$, '55000', NULL, 'cancelling a finished run');
SELECT throws_ok($$SELECT flow_step_complete(current_setting('fe.run')::uuid, 1)$$, '55000', NULL, 'completing a step of a finished run');
SELECT throws_like($$SELECT flow_send(current_setting('fe.run')::uuid, 'answer', 'not json')$$, '%invalid input syntax for type json%',
  'a payload that is not JSON');

-- runtime expression errors fail the run, naming flow, state and expression
SELECT flow_define($${
  "id": "t_expr_err", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "action", "actions": [{"executor": "set", "config": {"a": 1, "b": "{{ customer.address.city }}"}}],
          "transitions": {"always": "done"}},
    "done": {}
  }}$$) \gset
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_expr_err', '{"customer": {}}') \gset
SELECT results_eq($$SELECT status, state, error->>'sqlstate', error->>'message', error->>'expression' FROM flow_run(current_setting('fe.run')::uuid)$$,
  $$VALUES ('failed'::text, 's'::text, '38000'::text, 'expression "customer.address.city" failed in state "s" of flow "t_expr_err"'::text, 'customer.address.city'::text)$$,
  'a runtime expression error fails the run and names flow, state and expression');
SELECT ok((SELECT error->>'detail' FROM flow_runs WHERE id = :'r') LIKE 'TypeError:%', 'the detail is the JavaScript error');
SELECT results_eq($$SELECT status, error->>'sqlstate' FROM flow_run_steps WHERE run_id = current_setting('fe.run')::uuid$$,
  $$VALUES ('failed'::text, '38000'::text)$$, 'the failed action is a failed step row');
SELECT is((SELECT context FROM flow_runs WHERE id = :'r'), '{"customer": {}}', 'a failing set assigns nothing');
SELECT isnt((SELECT finished_at FROM flow_runs WHERE id = :'r'), NULL, 'a failed run is finished');

SELECT flow_define($${
  "id": "t_cond_err", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "decision", "conditions": [{"expression": "payment_method === 'cod'", "event": "cod"}],
          "transitions": {"cod": "done", "always": "done"}},
    "done": {}
  }}$$) \gset
SELECT results_eq($$SELECT status, error->>'message' FROM flow_execute('t_cond_err', '{}')$$,
  $$VALUES ('failed'::text, 'expression "payment_method === ''cod''" failed in state "s" of flow "t_cond_err"'::text)$$,
  'an undefined variable in a condition fails the run');

-- sql executor errors without an error transition fail the run
CREATE FUNCTION public.t_fail(a jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('x', (a->>'n')::int / 0) $$;
SELECT flow_define($${
  "id": "t_sql_err", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "action", "actions": [{"executor": "sql", "config": {"function": "public.t_fail(jsonb)", "args": {"n": 1}}}],
          "transitions": {"always": "done"}},
    "done": {}
  }}$$) \gset
SELECT results_eq($$SELECT status, error->>'sqlstate', error->>'executor' FROM flow_execute('t_sql_err')$$,
  $$VALUES ('failed'::text, '22012'::text, 'sql'::text)$$, 'an sql error with no error transition fails the run');
DROP FUNCTION public.t_fail(jsonb);
SELECT results_eq($$SELECT status, error->>'sqlstate' FROM flow_execute('t_sql_err')$$,
  $$VALUES ('failed'::text, '42883'::text)$$, 'a function dropped after definition fails the run, not the caller');

-- the sandbox: nothing of one run survives into the next
SELECT flow_define($${
  "id": "t_sandbox2", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "action", "actions": [{"executor": "set", "config": {
            "r1": "{{ leaked = 5 }}", "r2": "{{ Math.PI = 3 }}", "r3": "{{ (Object.prototype.polluted = 1) }}"}}],
          "transitions": {"always": "done"}},
    "done": {"actions": [{"executor": "set", "config": {
            "leak": "{{ typeof leaked }}", "pi": "{{ Math.PI > 3.14 }}", "polluted": "{{ ({}).polluted === undefined }}",
            "no_eval": "{{ typeof this.eval }}",
            "no_function": "{{ typeof [].map.constructor('return 1') !== 'function' }}"}}]}
  }}$$) \gset
SELECT is((flow_execute('t_sandbox2')).context - 'r1' - 'r2' - 'r3',
  '{"pi": true, "leak": "undefined", "no_eval": "undefined", "polluted": true, "no_function": true}',
  'assignments cannot create globals or change built-ins');
SELECT is((flow_execute('t_sandbox2')).context->>'leak', 'undefined', 'and a second run sees nothing of the first');

-- bounded memory
SET LOCAL flow_engine.expression_memory_limit = '1MB';
SELECT flow_define($${
  "id": "t_mem", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "action", "actions": [{"executor": "set", "config": {"big": "{{ 'x'.repeat(n) }}"}}],
          "transitions": {"always": "done"}},
    "done": {}
  }}$$) \gset
SELECT results_eq($$SELECT status, error->>'sqlstate' FROM flow_execute('t_mem', '{"n": 5000000}')$$,
  $$VALUES ('failed'::text, '38000'::text)$$, 'an expression that needs more memory than the limit fails the run');
SELECT is(length((flow_execute('t_mem', '{"n": 1000}')).context->>'big'), 1000, 'the next evaluation works');
RESET flow_engine.expression_memory_limit;

-- bounded loops between states
SET LOCAL flow_engine.max_transitions = 50;
SELECT flow_define($${
  "id": "t_loop", "initialState": "a", "finalStates": ["done"],
  "states": {
    "a": {"type": "action", "transitions": {"always": "b"}},
    "b": {"type": "action", "transitions": {"always": "a", "never": "done"}},
    "done": {}
  }}$$) \gset
SELECT results_eq($$SELECT status, error->>'sqlstate', error->>'message' FROM flow_execute('t_loop')$$,
  $$VALUES ('failed'::text, '54000'::text, 'run of flow "t_loop" made more than 50 transitions in one call'::text)$$,
  'a flow that loops without waiting fails after flow_engine.max_transitions');
RESET flow_engine.max_transitions;

-- an sql step may start other runs, but not re-enter its own
CREATE FUNCTION public.t_nested(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('inner_state', (flow_execute('t_err')).state) $$;
CREATE FUNCTION public.t_reenter(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT to_jsonb((flow_send((a->>'run')::uuid, 'go')).status) $$;
SELECT flow_define($${
  "id": "t_nest", "initialState": "s", "finalStates": ["done", "bad"],
  "states": {
    "s": {"type": "action",
          "actions": [{"executor": "set", "config": {"before": "{{ 'kept' }}"}},
                      {"executor": "sql", "config": {"function": "public.t_nested(jsonb)"}, "output": "inner"},
                      {"executor": "set", "config": {"after": "{{ before + '/' + inner.inner_state }}"}}],
          "transitions": {"always": "w"}},
    "w": {"type": "wait", "transitions": {"go": "r"}},
    "r": {"type": "action", "actions": [{"executor": "sql", "config": {"function": "public.t_reenter(jsonb)", "args": {"run": "{{ run_id }}"}}}],
          "transitions": {"always": "done", "error": "bad"}},
    "done": {}, "bad": {}
  }}$$) \gset
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_nest') \gset
SELECT is((SELECT context->>'after' FROM flow_runs WHERE id = :'r'), 'kept/ask',
  'an sql step can start another run, and the outer context is intact');
UPDATE flow_runs SET context = context || jsonb_build_object('run_id', id) WHERE id = :'r';
SELECT is((flow_send(:'r', 'go')).state, 'bad', 'an sql step that re-enters its own run fails the step');
SELECT is((SELECT error->>'sqlstate' FROM flow_run_steps WHERE run_id = :'r' AND executor = 'sql' AND state = 'r'), '55006',
  'with object_in_use');

-- no data is lost by a refused call
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_err') \gset
SELECT throws_ok($$SELECT flow_send(current_setting('fe.run')::uuid, 'bogus')$$, '22023', NULL, 'refused event');
SELECT results_eq($$SELECT status, state FROM flow_run(current_setting('fe.run')::uuid)$$,
  $$VALUES ('waiting'::text, 'ask'::text)$$, 'the run is unchanged by a refused event');
SELECT is((flow_send(:'r', 'skip')).status, 'completed', 'and still takes a good one');

SELECT * FROM finish();
ROLLBACK;
