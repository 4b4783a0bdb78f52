-- State timeouts: the worker fires "timeout" when a run still waits in the
-- state when its timer expires; leaving the state cancels the timer; a
-- state without a "timeout" transition fails the run.
\i test/lib/prelude.sql
SELECT plan(16);

CREATE FUNCTION pg_temp.define(name text, timeout_ms int, with_transition bool) RETURNS void LANGUAGE sql AS $$
  SELECT flow_define(jsonb_build_object(
    'id', name, 'initialState', 'ask', 'finalStates', jsonb_build_array('answered', 'expired'),
    'states', jsonb_build_object(
      'ask', jsonb_build_object('type', 'wait', 'timeout', timeout_ms,
               'actions', '[{"executor": "respond", "config": {"text": "still there?"}}]'::jsonb,
               'transitions', CASE WHEN with_transition THEN '{"reply": "answered", "timeout": "expired"}'::jsonb
                                   ELSE '{"reply": "answered"}'::jsonb END),
      'answered', '{}'::jsonb,
      'expired', '{"actions": [{"executor": "set", "config": {"after": "{{ event.timeout_ms }}", "in": "{{ event.state }}"}}]}'::jsonb)));
$$;
SELECT pg_temp.define('t_timer_short', 200, true), pg_temp.define('t_timer_long', 600000, true),
       pg_temp.define('t_timer_none', 200, false) \gset

-- 1. a run still waiting when the timer expires gets "timeout"
SELECT set_config('fe.r1', id::text, false) AS r1, status FROM flow_execute('t_timer_short') \gset
SELECT is(:'status'::text, 'waiting', 'the run waits in a state with a timeout');
SELECT ok((SELECT timeout_at BETWEEN created_at + interval '150 ms' AND created_at + interval '1 s'
           FROM flow_runs WHERE id = :'r1'), 'its timer is set to the state''s timeout');
SELECT ok(pg_temp.wait_until(format($$SELECT status = 'completed' FROM flow_runs WHERE id = %L$$, :'r1'), 30),
          'the worker fires the timer');
SELECT results_eq(format($$SELECT state, context->'after', context->>'in', timeout_at FROM flow_runs WHERE id = %L$$, :'r1'),
          $$VALUES ('expired'::text, '200'::jsonb, 'ask'::text, NULL::timestamptz)$$,
          'the run took the timeout transition, with the timeout as the event payload');
SELECT results_eq(format($$SELECT event, source, from_state, to_state FROM flow_events WHERE run_id = %L AND event = 'timeout'$$, :'r1'),
          $$VALUES ('timeout'::text, 'timer'::text, 'ask'::text, 'expired'::text)$$,
          'the timeout is recorded once, as coming from the timer');
SELECT ok((SELECT consumed_at - r.created_at >= interval '200 ms' FROM flow_events e JOIN flow_runs r ON r.id = e.run_id
           WHERE e.run_id = :'r1' AND e.event = 'timeout'), 'not before the timeout');

-- regression: several timers due in one turn of the worker (a list built in
-- SPI memory crashed the worker on the second one)
SELECT array_agg((flow_execute('t_timer_short')).id) AS many FROM generate_series(1, 5) \gset
SELECT ok(pg_temp.wait_until(format($$SELECT bool_and(status = 'completed' AND state = 'expired') FROM flow_runs WHERE id = ANY (%L::uuid[])$$, :'many'), 30),
          'five timers due at once all fire');

-- 2. an event before the timeout cancels the timer
SELECT set_config('fe.r2', id::text, false) AS r2 FROM flow_execute('t_timer_long') \gset
SELECT ok((SELECT timeout_at IS NOT NULL FROM flow_runs WHERE id = :'r2'), 'a long timer is set');
SELECT is((flow_send(:'r2', 'reply')).state, 'answered', 'the user answers in time');
SELECT is((SELECT timeout_at FROM flow_runs WHERE id = :'r2'), NULL, 'leaving the state clears the timer');

-- 3. a rolled-back run leaves no timer behind
BEGIN;
SELECT set_config('fe.r3', id::text, false) AS r3 FROM flow_execute('t_timer_short') \gset
ROLLBACK;
SELECT is((SELECT count(*)::int FROM flow_runs WHERE id = :'r3'), 0, 'a rolled-back run has no timer');

-- 4. without a "timeout" transition the timeout fails the run, saying so
SELECT set_config('fe.r4', id::text, false) AS r4 FROM flow_execute('t_timer_none') \gset
SELECT ok(pg_temp.wait_until(format($$SELECT status = 'failed' FROM flow_runs WHERE id = %L$$, :'r4'), 30),
          'a timeout with no transition fails the run');
SELECT results_eq(format($$SELECT error->>'message', error->>'hint' FROM flow_runs WHERE id = %L$$, :'r4'),
          $$VALUES ('state "ask" of flow "t_timer_none" timed out after 200 ms'::text,
                    'Add a "timeout" transition to the state.'::text)$$, 'the error names the state, the flow and the timeout');
SELECT is((SELECT count(*)::int FROM flow_validate((SELECT definition FROM flow_definitions WHERE name = 't_timer_none' ORDER BY version DESC LIMIT 1))
           WHERE severity = 'warning' AND path = '$.states.ask.timeout'), 1, 'flow_validate warns about it');

-- 5. a retry's backoff is a due time the worker honours: a flaky step waits, then succeeds
SELECT flow_define(format($${"id": "t_backoff", "initialState": "call", "finalStates": ["done", "bad"],
  "states": {"call": {"actions": [{"executor": "http", "config": {"url": "%s/flaky/1", "retry": {"max_attempts": 2, "backoff_ms": 400}}}],
                      "transitions": {"always": "done", "error": "bad"}}, "done": {}, "bad": {}}}$$,
  current_setting('fe_test.http'))::jsonb) \gset
SELECT set_config('fe.r5', id::text, false) AS r5 FROM flow_execute('t_backoff') \gset
SELECT ok(pg_temp.wait_until(format($$SELECT state = 'done' FROM flow_runs WHERE id = %L$$, :'r5'), 30),
          'a step retried after a backoff completes');
SELECT ok((SELECT max((j->>'at')::float8) - min((j->>'at')::float8) >= 0.2 FROM pg_temp.http_log() j
           WHERE j->'headers'->>'idempotency-key' = :'r5' || '-1'),
          'the retry waited at least half the backoff (the jitter range)');

SELECT * FROM finish();
