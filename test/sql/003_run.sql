-- Run semantics: action order, event priority, waiting, templates, versions.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(41);

-------------------------------------------------------------------------------
-- onEntry, actions, onExit, in order; final state's actions run, then completes
-------------------------------------------------------------------------------
SELECT flow_define($${
  "id": "t_order", "initialState": "start", "finalStates": ["done"],
  "states": {
    "start": {"type": "action",
      "onEntry": [{"executor": "set", "config": {"trace": "{{ ['start.onEntry'] }}"}}],
      "actions": [{"executor": "set", "config": {"trace": "{{ trace.concat(['start.actions']) }}"}}],
      "onExit":  [{"executor": "set", "config": {"trace": "{{ trace.concat(['start.onExit']) }}"}}],
      "transitions": {"always": "done"}},
    "done": {"type": "action",
      "onEntry": [{"executor": "set", "config": {"trace": "{{ trace.concat(['done.onEntry']) }}"}}],
      "actions": [{"executor": "set", "config": {"trace": "{{ trace.concat(['done.actions']) }}"}}]}
  }}$$) \gset
SELECT set_config('fe.order_run', id::text, false) AS order_run FROM flow_execute('t_order') \gset
SELECT results_eq($$SELECT status, state, context->'trace' FROM flow_run(current_setting('fe.order_run')::uuid)$$,
  $$VALUES ('completed'::text, 'done'::text, '["start.onEntry", "start.actions", "start.onExit", "done.onEntry", "done.actions"]'::jsonb)$$,
  'onEntry, actions and onExit run in order, and the final state''s actions run before completion');
SELECT is((SELECT array_agg(state || '.' || phase || '.' || executor || '.' || status ORDER BY seq) FROM flow_run_steps WHERE run_id = current_setting('fe.order_run')::uuid),
  ARRAY['start.onEntry.set.completed', 'start.actions.set.completed', 'start.onExit.set.completed',
        'done.onEntry.set.completed', 'done.actions.set.completed'],
  'each action is a step row, in sequence');
SELECT ok((SELECT bool_and(started_at <= finished_at AND attempts = 1) FROM flow_run_steps WHERE run_id = current_setting('fe.order_run')::uuid),
  'step rows carry timings and attempts');
SELECT is((SELECT array_agg(event || ':' || source || ':' || coalesce(from_state, '-') || '>' || to_state ORDER BY seq) FROM flow_events WHERE run_id = current_setting('fe.order_run')::uuid),
  ARRAY['start:start:->start', 'always:always:start>done'], 'every transition is recorded as an event');
SELECT isnt((SELECT finished_at FROM flow_runs WHERE id = current_setting('fe.order_run')::uuid), NULL, 'a completed run has finished_at');

-------------------------------------------------------------------------------
-- the next event: error, then sql result event, then first true condition, then always
-------------------------------------------------------------------------------
CREATE FUNCTION public.t_pick(a jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  IF a->>'mode' = 'raise' THEN
    RAISE EXCEPTION 'boom for %', a->>'who' USING ERRCODE = 'check_violation', DETAIL = 'It was asked to fail.';
  END IF;
  IF a->>'mode' = 'result' THEN
    RETURN jsonb_build_object('event', 'by_result', 'n', 1);
  END IF;
  RETURN jsonb_build_object('n', 2);
END $$;
SELECT flow_define($${
  "id": "t_prio", "initialState": "s", "finalStates": ["r", "c", "c2", "a", "e"],
  "states": {
    "s": {"type": "decision",
      "actions": [{"executor": "sql", "config": {"function": "public.t_pick(jsonb)", "args": {"mode": "{{ mode }}", "who": "${who}"}}, "output": "picked"}],
      "conditions": [{"expression": "cond === 1", "event": "by_condition"},
                     {"expression": "cond >= 1", "event": "by_condition2"}],
      "transitions": {"by_result": "r", "by_condition": "c", "by_condition2": "c2", "always": "a", "error": "e"}},
    "r": {}, "c": {}, "c2": {}, "a": {},
    "e": {"actions": [{"executor": "set", "config": {"caught": "{{ event.sqlstate + ' ' + event.message }}"}}]}
  }}$$) \gset
SELECT is((flow_execute('t_prio', '{"mode": "result", "cond": 1, "who": "x"}')).state, 'r', 'an sql result event beats a true condition');
SELECT is((flow_execute('t_prio', '{"mode": "plain", "cond": 1, "who": "x"}')).state, 'c', 'a true condition beats always');
SELECT is((flow_execute('t_prio', '{"mode": "plain", "cond": 2, "who": "x"}')).state, 'c2', 'the first true condition wins');
SELECT is((flow_execute('t_prio', '{"mode": "plain", "cond": 0, "who": "x"}')).state, 'a', 'always is taken when no condition holds');
SELECT set_config('fe.err_run', id::text, false) AS err_run FROM flow_execute('t_prio', '{"mode": "raise", "cond": 1, "who": "Zed"}') \gset
SELECT results_eq($$SELECT status, state FROM flow_run(current_setting('fe.err_run')::uuid)$$,
  $$VALUES ('completed'::text, 'e'::text)$$, 'an sql error routes to the error transition, ahead of everything');
SELECT is((SELECT context->>'caught' FROM flow_runs WHERE id = current_setting('fe.err_run')::uuid),
  '23514 sql step public.t_pick(jsonb) failed in state "s" of flow "t_prio": boom for Zed',
  'the error is the payload of the error event');
SELECT results_eq($$SELECT status, error->>'sqlstate', error->>'detail', error->>'state', output FROM flow_run_steps WHERE run_id = current_setting('fe.err_run')::uuid AND executor = 'sql'$$,
  $$VALUES ('failed'::text, '23514'::text, 'It was asked to fail.'::text, 's'::text, NULL::jsonb)$$,
  'the sql error lands in the step row');
SELECT is((SELECT payload->>'sqlstate' FROM flow_events WHERE run_id = current_setting('fe.err_run')::uuid AND source = 'error'), '23514',
  'the error event row carries the error');
SELECT is((SELECT context->'picked' FROM flow_runs r WHERE r.flow = 't_prio' AND state = 'c2'), '{"n": 2}',
  'an sql result is stored under output');
SELECT is((SELECT input FROM flow_run_steps s JOIN flow_runs r ON r.id = s.run_id WHERE r.flow = 't_prio' AND r.state = 'c2'),
  '{"who": "x", "mode": "plain"}', 'templated sql args are the step input');

-------------------------------------------------------------------------------
-- waiting for an external event; the payload is visible as `event`
-------------------------------------------------------------------------------
SELECT flow_define($${
  "id": "t_wait", "initialState": "ask", "finalStates": ["done"],
  "states": {
    "ask": {"type": "wait", "actions": [{"executor": "respond", "config": {"text": "What is your name?"}}],
            "transitions": {"answer": "greet", "skip": "done"}},
    "greet": {"type": "action",
      "actions": [{"executor": "set", "config": {"name": "{{ event.text }}"}},
                  {"executor": "respond", "config": {"text": "Hello {{ name }}, you are {{ event.age }}."}, "output": "last_reply"}],
      "transitions": {"always": "done"}},
    "done": {}
  }}$$) \gset
SELECT set_config('fe.wait_run', id::text, false) AS wait_run FROM flow_execute('t_wait', '{}', 'customer-7') \gset
SELECT results_eq($$SELECT status, state, response FROM flow_run(current_setting('fe.wait_run')::uuid)$$,
  $$VALUES ('waiting'::text, 'ask'::text, 'What is your name?'::text)$$, 'a state with no internal event waits');
SELECT is((SELECT key FROM flow_runs WHERE id = current_setting('fe.wait_run')::uuid), 'customer-7', 'the key is stored');
SELECT results_eq($$SELECT status, state, response, context->>'name', context->>'last_reply' FROM flow_send(current_setting('fe.wait_run')::uuid, 'answer', '{"text": "Ann", "age": 30}')$$,
  $$VALUES ('completed'::text, 'done'::text, 'Hello Ann, you are 30.'::text, 'Ann'::text, 'Hello Ann, you are 30.'::text)$$,
  'flow_send delivers the event and advances the run');
SELECT is((SELECT array_agg(role || ': ' || content ORDER BY seq) FROM flow_messages WHERE run_id = current_setting('fe.wait_run')::uuid),
  ARRAY['assistant: What is your name?', 'assistant: Hello Ann, you are 30.'], 'respond appends to the conversation');
SELECT results_eq($$SELECT event, source, payload, from_state, to_state, status FROM flow_events WHERE run_id = current_setting('fe.wait_run')::uuid AND source = 'external'$$,
  $$VALUES ('answer'::text, 'external'::text, '{"age": 30, "text": "Ann"}'::jsonb, 'ask'::text, 'greet'::text, 'consumed'::text)$$,
  'external events are recorded with their payloads');
SELECT is((SELECT count(*)::int FROM flow_active_runs WHERE id = current_setting('fe.wait_run')::uuid), 0, 'a completed run is not active');

-------------------------------------------------------------------------------
-- templates: types are kept, ${path}, mixed strings, the seed expressions verbatim
-------------------------------------------------------------------------------
SELECT flow_define($${
  "id": "t_tmpl", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "action",
      "actions": [{"executor": "set", "output": "assigned", "config": {
          "obj": "{{ order }}", "num": "{{ distance * 10 }}", "flag": "{{ payment_method === 'cod' }}",
          "technical": "{{ issueCategory.toLowerCase().includes('technical') }}",
          "path": "${order.items[1].name}", "mixed": "Total: {{ order.total }} for ${order.items.length} items",
          "nested": {"list": ["{{ order.total }}", "x", 3], "lit": {"a": [1, true, null]}},
          "nothing": "{{ null }}", "text_with_obj": "o={{ order.items[0] }}"}}],
      "conditions": [{"expression": "issueCategory.toLowerCase().includes('technical')", "event": "tech"}],
      "transitions": {"tech": "done", "always": "done"}},
    "done": {}
  }}$$) \gset
SELECT set_config('fe.tmpl_run', id::text, false) AS tmpl_run FROM flow_execute('t_tmpl', $${"distance": 2.5, "payment_method": "cod", "issueCategory": "Technical Fault",
  "order": {"total": 120, "items": [{"name": "dosa"}, {"name": "idli"}]}}$$) \gset
SELECT is((SELECT context->'obj' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), '{"total": 120, "items": [{"name": "dosa"}, {"name": "idli"}]}',
  'a lone placeholder keeps an object an object');
SELECT is((SELECT context->'num' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), '25', '{{ distance * 10 }} is a number');
SELECT is((SELECT context->'flag' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), 'true', 'payment_method === ''cod'' works verbatim');
SELECT is((SELECT context->'technical' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), 'true', 'issueCategory.toLowerCase().includes(''technical'') works verbatim');
SELECT is((SELECT context->'path' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), '"idli"', '${path} placeholders work');
SELECT is((SELECT context->>'mixed' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), 'Total: 120 for 2 items', 'mixed text and placeholders make a string');
SELECT is((SELECT context->'nested' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), '{"lit": {"a": [1, true, null]}, "list": [120, "x", 3]}',
  'placeholders inside nested objects and arrays');
SELECT is((SELECT context->'nothing' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), 'null', 'null stays null');
SELECT is((SELECT context->>'text_with_obj' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), 'o={"name":"dosa"}', 'objects inside text print as JSON');
SELECT is((SELECT context->'assigned'->'num' FROM flow_runs WHERE id = current_setting('fe.tmpl_run')::uuid), '25', 'a set action''s output holds what it assigned');
SELECT is((SELECT to_state FROM flow_events WHERE run_id = current_setting('fe.tmpl_run')::uuid AND source = 'condition'), 'done', 'the seed condition routes');

-------------------------------------------------------------------------------
-- runs keep the version they started on
-------------------------------------------------------------------------------
SELECT flow_define($${"id": "t_ver", "initialState": "w", "finalStates": ["done"], "states": {
  "w": {"type": "wait", "transitions": {"go": "done"}},
  "done": {"actions": [{"executor": "respond", "config": {"text": "version one"}}]}}}$$) \gset
SELECT set_config('fe.v1_run', id::text, false) AS v1_run FROM flow_execute('t_ver') \gset
SELECT flow_define($${"id": "t_ver", "initialState": "w", "finalStates": ["done"], "states": {
  "w": {"type": "wait", "transitions": {"go": "done"}},
  "done": {"actions": [{"executor": "respond", "config": {"text": "version two"}}]}}}$$) \gset
SELECT is((flow_send(current_setting('fe.v1_run')::uuid, 'go')).response, 'version one', 'a run keeps the version it started on');
SELECT is((SELECT (r).response FROM (SELECT flow_execute('t_ver') AS r) x), NULL, 'a new run waits first');
SELECT results_eq($$SELECT version, response FROM flow_send((SELECT id FROM flow_runs WHERE flow = 't_ver' AND status = 'waiting'), 'go')$$,
  $$VALUES (2, 'version two'::text)$$, 'a new run uses the latest version');

-------------------------------------------------------------------------------
-- cancel and prune
-------------------------------------------------------------------------------
SELECT set_config('fe.cancel_run', id::text, false) AS cancel_run FROM flow_execute('t_wait') \gset
SELECT results_eq($$SELECT status, state FROM flow_cancel(current_setting('fe.cancel_run')::uuid)$$,
  $$VALUES ('cancelled'::text, 'ask'::text)$$, 'flow_cancel cancels a waiting run');
SELECT isnt((SELECT finished_at FROM flow_runs WHERE id = current_setting('fe.cancel_run')::uuid), NULL, 'a cancelled run has finished_at');
SELECT set_config('fe.keep_run', id::text, false) AS keep_run FROM flow_execute('t_wait') \gset
SELECT cmp_ok(flow_prune('-1 hour'), '>=', 10::bigint, 'flow_prune deletes finished runs');
SELECT is((SELECT count(*)::int FROM flow_runs WHERE status IN ('completed', 'failed', 'cancelled')), 0, 'no finished run is left');
SELECT is((SELECT count(*)::int FROM flow_run_steps s WHERE s.run_id = current_setting('fe.order_run')::uuid), 0, 'their steps are gone too');
SELECT is((SELECT status FROM flow_runs WHERE id = current_setting('fe.keep_run')::uuid), 'waiting', 'active runs are kept');

SELECT * FROM finish();
ROLLBACK;
