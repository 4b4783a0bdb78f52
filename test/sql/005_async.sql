-- Asynchronous steps: pending rows, the inbox, and resuming on completion.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(29);

SELECT flow_define($${
  "id": "t_async", "initialState": "start", "finalStates": ["done", "broken"],
  "states": {
    "start": {"type": "action",
      "actions": [{"executor": "set", "config": {"a": 1}},
                  {"executor": "http", "config": {"url": "http://tools.local/item/{{ a }}", "method": "GET", "timeout_ms": 500}, "output": "resp"},
                  {"executor": "set", "config": {"b": "{{ resp.status }}"}}],
      "conditions": [{"expression": "resp.status === 200", "event": "ok"}],
      "transitions": {"ok": "wait_pay", "error": "broken"}},
    "wait_pay": {"type": "wait",
      "actions": [{"executor": "respond", "config": {"text": "pay please {{ event.n === undefined ? '' : event.n }}"}}],
      "transitions": {"paid": "done", "poke": "wait_pay"}},
    "done": {"actions": [{"executor": "respond", "config": {"text": "paid {{ event.amount }}"}}]},
    "broken": {"actions": [{"executor": "set", "config": {"why": "{{ event.detail }}"}}]}
  }}$$) \gset

SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_async') \gset
SELECT results_eq($$SELECT status, state, context FROM flow_run(current_setting('fe.run')::uuid)$$,
  $$VALUES ('running'::text, 'start'::text, '{"a": 1}'::jsonb)$$, 'an http action leaves the run running, with a pending step');
SELECT results_eq($$SELECT seq, executor, status, input, attempts, due_at IS NOT NULL FROM flow_run_steps
                    WHERE run_id = current_setting('fe.run')::uuid AND executor = 'http'$$,
  $$VALUES (2, 'http'::text, 'pending'::text, '{"url": "http://tools.local/item/1", "method": "GET", "timeout_ms": 500}'::jsonb, 0, true)$$,
  'the pending step holds the templated config and is due now');
SELECT is((SELECT count(*)::int FROM flow_active_runs WHERE id = :'r' AND status = 'running'), 1, 'the run is active');

-- events that arrive while the run is busy are queued, in order
SELECT is((flow_send(:'r', 'poke', '{"n": 1}')).status, 'running', 'an event for a busy run is queued');
SELECT is((flow_send(:'r', 'paid', '{"amount": 42}')).status, 'running', 'a second one too');
SELECT results_eq($$SELECT event, status, payload FROM flow_events WHERE run_id = current_setting('fe.run')::uuid AND source = 'external' ORDER BY seq$$,
  $$VALUES ('poke'::text, 'queued'::text, '{"n": 1}'::jsonb), ('paid', 'queued', '{"amount": 42}')$$, 'the inbox holds them in order');
SELECT is((SELECT queued_events FROM flow_runs WHERE id = :'r'), 2, 'the run counts its inbox');
SELECT throws_ok($$SELECT flow_send(current_setting('fe.run')::uuid, 'teleport')$$, '22023',
  'flow "t_async" has no state that accepts event "teleport"', 'an event no state accepts is refused, not queued');

-- completing the step resumes the run where it parked, then drains the inbox
SELECT throws_ok($$SELECT flow_step_complete(current_setting('fe.run')::uuid, 1, '{}')$$, '55000',
  format('step 1 of flow run %s is not pending', current_setting('fe.run')), 'only the pending step can complete');
SELECT results_eq($$SELECT status, state, response FROM flow_step_complete(current_setting('fe.run')::uuid, 2, '{"status": 200, "body": {"id": 1}}')$$,
  $$VALUES ('completed'::text, 'done'::text, 'paid 42'::text)$$, 'completion resumes the run and the queued events are delivered');
SELECT is((SELECT context - 'resp' FROM flow_runs WHERE id = :'r'), '{"a": 1, "b": 200}', 'the remaining actions ran with the step output');
SELECT is((SELECT context->'resp' FROM flow_runs WHERE id = :'r'), '{"body": {"id": 1}, "status": 200}', 'the step output is stored under output');
SELECT results_eq($$SELECT event, status, from_state, to_state FROM flow_events WHERE run_id = current_setting('fe.run')::uuid AND source = 'external' ORDER BY seq$$,
  $$VALUES ('poke'::text, 'consumed'::text, 'wait_pay'::text, 'wait_pay'::text), ('paid', 'consumed', 'wait_pay', 'done')$$,
  'queued events were consumed in order');
SELECT is((SELECT array_agg(content ORDER BY seq) FROM flow_messages WHERE run_id = :'r'),
  ARRAY['pay please ', 'pay please 1', 'paid 42'], 'each delivery saw its own payload');
SELECT results_eq($$SELECT status, output, finished_at IS NOT NULL FROM flow_run_steps WHERE run_id = current_setting('fe.run')::uuid AND seq = 2$$,
  $$VALUES ('completed'::text, '{"body": {"id": 1}, "status": 200}'::jsonb, true)$$, 'the step row is completed');
SELECT is((SELECT queued_events FROM flow_runs WHERE id = :'r'), 0, 'the inbox is empty');

-- a failed step routes to error, with the error as the event payload
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_async') \gset
SELECT results_eq($$SELECT status, state, context->>'why' FROM flow_step_complete(current_setting('fe.run')::uuid, 2, NULL, 'HTTP 500 from tools.local')$$,
  $$VALUES ('completed'::text, 'broken'::text, 'HTTP 500 from tools.local'::text)$$, 'a failed step raises the error event');
SELECT results_eq($$SELECT status, error->>'detail' FROM flow_run_steps WHERE run_id = current_setting('fe.run')::uuid AND seq = 2$$,
  $$VALUES ('failed'::text, 'HTTP 500 from tools.local'::text)$$, 'the error is in the step row');
SELECT is((SELECT context ? 'b' FROM flow_runs WHERE id = :'r'), false, 'the actions after the failed one did not run');

-- events left in the inbox of a run that finishes are rejected, and kept
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_async') \gset
SELECT is((flow_send(:'r', 'paid', '{"amount": 1}')).status, 'running', 'queued');
SELECT is((flow_step_complete(:'r', 2, NULL, 'down')).state, 'broken', 'the run ends without waiting');
SELECT is((SELECT status FROM flow_events WHERE run_id = :'r' AND event = 'paid'), 'rejected', 'the leftover event is rejected, not deleted');

-- cancelling a busy run cancels its pending step and refuses its inbox
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_async') \gset
SELECT is((flow_send(:'r', 'paid')).status, 'running', 'queued');
SELECT is((flow_cancel(:'r')).status, 'cancelled', 'a running run can be cancelled');
SELECT results_eq($$SELECT (SELECT status FROM flow_run_steps WHERE run_id = current_setting('fe.run')::uuid AND seq = 2),
                           (SELECT status FROM flow_events WHERE run_id = current_setting('fe.run')::uuid AND event = 'paid')$$,
  $$VALUES ('cancelled'::text, 'rejected'::text)$$, 'its pending step is cancelled and its inbox refused');

-- every asynchronous executor parks the run
SELECT flow_define($${
  "id": "t_async_all", "initialState": "s", "finalStates": ["done"],
  "states": {
    "s": {"type": "action", "actions": [
        {"executor": "llm", "config": {"prompt": "Hi {{ name }}", "model": "m"}},
        {"executor": "nlu", "config": {"text": "{{ name }}"}},
        {"executor": "tool", "config": {"name": "distance", "params": {"from": "a"}}}],
      "transitions": {"always": "done"}},
    "done": {}
  }}$$) \gset
INSERT INTO flow_tools (name, kind, config)
VALUES ('distance', 'http', '{"url": "http://tools.local/distance?from={{ params.from }}"}')
ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, config = excluded.config;
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('t_async_all', '{"name": "Ann"}') \gset
SELECT is((SELECT executor || ' ' || input::text FROM flow_run_steps WHERE run_id = :'r' AND status = 'pending'),
  'llm {"model": "m", "prompt": "Hi Ann"}', 'llm parks the run');
SELECT is((SELECT status || ' ' || state FROM flow_step_complete(:'r', 1, '{"text": "hello"}')), 'running s', 'completing llm reaches nlu');
SELECT is((SELECT status || ' ' || state FROM flow_step_complete(:'r', 2, '{"intent": "x"}')), 'running s', 'completing nlu reaches tool');
SELECT is((SELECT status || ' ' || state FROM flow_step_complete(:'r', 3, '{"km": 3}')), 'completed done', 'completing tool finishes the run');

SELECT * FROM finish();
ROLLBACK;
