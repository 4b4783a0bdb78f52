-- The worker sends http steps: results, retries, timeouts, bad responses,
-- no batch barrier, idempotency keys, secrets, poison runs, cancel.
-- Runs are committed (the worker only sees commits); every wait is on a
-- condition with a timeout.
\i test/lib/prelude.sql
SELECT plan(50);

SELECT current_setting('fe_test.http') AS http \gset
-- the worker connects once this database exists (it retries every second)
SELECT pg_temp.wait_until($$SELECT count(*) = 1 FROM pg_stat_activity
  WHERE backend_type = 'flow_engine worker' AND datname = current_database()$$, 60) AS worker_up \gset
SELECT pid AS worker_pid FROM pg_stat_activity WHERE backend_type = 'flow_engine worker' \gset

SELECT is((SELECT count(*)::int FROM pg_stat_activity
           WHERE backend_type = 'flow_engine worker' AND datname = current_database()),
          1, 'one flow_engine worker serves this database');

-- one http step, then done; errors go to "bad"
SELECT flow_define($${
  "id": "t_http", "initialState": "call", "finalStates": ["done", "bad"],
  "states": {
    "call": {"actions": [{"executor": "http", "output": "resp",
                          "config": {"url": "{{ base }}{{ path }}", "method": "{{ method }}",
                                     "body": "{{ body }}", "headers": "{{ headers }}",
                                     "timeout_ms": "{{ timeout }}",
                                     "retry": {"max_attempts": "{{ attempts }}", "backoff_ms": 10}}}],
             "transitions": {"always": "done", "error": "bad"}},
    "done": {},
    "bad": {"actions": [{"executor": "set", "config": {"why": "{{ event.detail }}"}}]}
  }}$$) \gset

CREATE FUNCTION pg_temp.start(path text, extra jsonb DEFAULT '{}') RETURNS uuid LANGUAGE sql AS $$
  SELECT id FROM flow_execute('t_http',
    jsonb_build_object('base', current_setting('fe_test.http'), 'path', path, 'method', 'GET',
                       'body', NULL, 'headers', '{}'::jsonb, 'timeout', 5000, 'attempts', 1) || extra)
$$;
CREATE FUNCTION pg_temp.finished(run uuid) RETURNS boolean LANGUAGE sql AS $$
  SELECT status IN ('completed', 'failed', 'cancelled') FROM flow_runs WHERE id = run
$$;
CREATE FUNCTION pg_temp.wait_run(run uuid) RETURNS boolean LANGUAGE sql AS $$
  SELECT pg_temp.wait_until(format('SELECT pg_temp.finished(%L)', run), 30)
$$;
CREATE FUNCTION pg_temp.step(run uuid) RETURNS flow_run_steps LANGUAGE sql AS $$
  SELECT * FROM flow_run_steps WHERE run_id = run AND executor IN ('http', 'tool') ORDER BY seq LIMIT 1
$$;

-- 1. a POST with a JSON body and headers
SELECT pg_temp.start('/echo?x=5', '{"method": "POST", "body": {"n": 5}, "headers": {"X-Trace": "t-1"}}') AS r1 \gset
SELECT ok(pg_temp.wait_run(:'r1'), 'an http step is sent and its run completes');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r1'), 'done', 'the run took "always" after the response');
SELECT is((SELECT context->'resp'->'status' FROM flow_runs WHERE id = :'r1'), '200'::jsonb, 'output has the status');
SELECT is((SELECT context->'resp'->'body'->'body' FROM flow_runs WHERE id = :'r1'), '{"n": 5}'::jsonb,
          'the templated JSON body was sent, and the JSON response parsed');
SELECT is((SELECT context->'resp'->'body'->>'method' FROM flow_runs WHERE id = :'r1'), 'POST', 'the method was sent');
SELECT is((SELECT context->'resp'->'body'->>'query' FROM flow_runs WHERE id = :'r1'), 'x=5', 'the url was sent');
SELECT is((SELECT context->'resp'->'body'->'headers'->>'x-trace' FROM flow_runs WHERE id = :'r1'), 't-1', 'headers were sent');
SELECT is((SELECT context->'resp'->'body'->'headers'->>'content-type' FROM flow_runs WHERE id = :'r1'),
          'application/json', 'a JSON body gets Content-Type application/json');
SELECT is((SELECT context->'resp'->'headers'->>'x-test-server' FROM flow_runs WHERE id = :'r1'), 'flow_engine',
          'response headers are recorded, names lower-cased');
SELECT ok((SELECT context->'resp'->'timings' ?& ARRAY['sent_at', 'connect_ms', 'ttfb_ms', 'total_ms'] FROM flow_runs WHERE id = :'r1'),
          'timings are recorded');
SELECT results_eq(format($$SELECT status, attempts, lease_until IS NULL, output->'status' FROM flow_run_steps WHERE run_id = %L$$, :'r1'),
          $$VALUES ('completed'::text, 1, true, '200'::jsonb)$$, 'the step row is completed once, with its output');
SELECT is((SELECT count(*)::int FROM pg_temp.http_log() j
           WHERE j->>'path' = '/echo?x=5' AND j->'headers'->>'idempotency-key' = :'r1' || '-1'),
          1, 'the request carries Idempotency-Key <run>-<step>, and was sent once');
SELECT is((SELECT count(*)::int FROM flow_events WHERE run_id = :'r1' AND event = 'always'), 1,
          'the transition after the response is recorded once');

-- 2. a body that is not JSON is kept as text; so is invalid JSON
SELECT pg_temp.start('/text') AS r2 \gset
SELECT pg_temp.start('/badjson') AS r3 \gset
SELECT ok(pg_temp.wait_run(:'r2') AND pg_temp.wait_run(:'r3'), 'text and invalid-JSON responses complete');
SELECT is((SELECT context->'resp'->'body' FROM flow_runs WHERE id = :'r2'), '"hello, this is not JSON"'::jsonb,
          'a text body is stored as a string');
SELECT is((SELECT context->'resp'->'body' FROM flow_runs WHERE id = :'r3'), '"{not json"'::jsonb,
          'an invalid JSON body is stored as a string');

-- 3. a 500 is retried with the same idempotency key until it succeeds
SELECT pg_temp.start('/flaky/2', '{"attempts": 3}') AS r4 \gset
SELECT ok(pg_temp.wait_run(:'r4'), 'a flaky endpoint is retried until it answers');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r4'), 'done', 'the run completes normally after retries');
SELECT is((pg_temp.step(:'r4')).attempts, 3, 'the step took three attempts');
SELECT is((SELECT count(DISTINCT j->'headers'->>'idempotency-key')::int || '/' || count(*)
           FROM pg_temp.http_log() j WHERE j->>'path' = '/flaky/2'
             AND j->'headers'->>'idempotency-key' = :'r4' || '-1'),
          '1/3', 'all three attempts carried the same idempotency key');

-- 4. retries exhausted: the error event, with the error in the step row
SELECT pg_temp.start('/status/503', '{"attempts": 2}') AS r5 \gset
SELECT ok(pg_temp.wait_run(:'r5'), 'a failing endpoint ends its run');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r5'), 'bad', 'exhausted retries raise the error event');
SELECT results_eq(format($$SELECT status, attempts, error->>'message' LIKE 'http step %% failed in state "call" of flow "t_http"' FROM flow_run_steps WHERE run_id = %L AND executor = 'http'$$, :'r5'),
          $$VALUES ('failed'::text, 2, true)$$, 'the step failed after two attempts, and says where');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r5'),
          '^GET http://127\.0\.0\.1:[0-9]+/status/503 returned HTTP 503: .*\(after 2 attempts\)$',
          'the error event''s detail names the request, the status and the attempts');

-- 5. a timeout, a refused connection
SELECT pg_temp.start('/hang', '{"timeout": 300}') AS r6 \gset
SELECT flow_execute('t_http', jsonb_build_object('base', 'http://127.0.0.1:1', 'path', '/x', 'method', 'GET',
       'body', NULL, 'headers', '{}'::jsonb, 'timeout', 2000, 'attempts', 1)) AS r7_row \gset
SELECT (:'r7_row'::flow_run_result).id AS r7 \gset
SELECT ok(pg_temp.wait_run(:'r6') AND pg_temp.wait_run(:'r7'), 'timeouts and refused connections end their runs');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r6'), 'timed out after 300 ms',
               'a timeout is reported with its limit');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r7'), '^GET http://127.0.0.1:1/x failed: ',
               'a refused connection is reported');

-- 6. a response over flow_engine.http_max_response_size fails without retries
SELECT pg_temp.start('/huge/' || ((SELECT setting::int FROM pg_settings WHERE name = 'flow_engine.http_max_response_size') * 1024 + 100),
                     '{"attempts": 3}') AS r8 \gset
SELECT ok(pg_temp.wait_run(:'r8'), 'an oversized response ends its run');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r8'), 'larger than flow_engine.http_max_response_size',
               'an oversized response is refused with a clear error');
SELECT is((pg_temp.step(:'r8')).attempts, 1, 'an oversized response is not retried');

-- 7. no batch barrier: a slow request does not hold up fast ones
SELECT pg_temp.start('/slow/3000') AS slow \gset
SELECT array_agg(pg_temp.start('/echo?fast=' || i)) AS fast FROM generate_series(1, 10) i \gset
SELECT ok(pg_temp.wait_until(format($$SELECT bool_and(pg_temp.finished(r)) FROM unnest(%L::uuid[]) r$$, :'fast'), 10),
          'ten fast requests complete');
SELECT is((SELECT status FROM flow_runs WHERE id = :'slow'), 'running',
          'while a slow request started before them is still on the wire');
SELECT ok(pg_temp.wait_run(:'slow'), 'the slow request completes too');

-- 8. secrets are substituted on the wire only
INSERT INTO flow_secrets VALUES ('t_token', 'tok-8c1f-SECRET') ON CONFLICT (name) DO UPDATE SET value = excluded.value;
SELECT pg_temp.start('/status/200?k={secret:t_token}',
                     '{"headers": {"Authorization": "Bearer {secret:t_token}"}}') AS r9 \gset
SELECT ok(pg_temp.wait_run(:'r9'), 'a request with secrets completes');
SELECT is((SELECT j->'headers'->>'authorization' FROM pg_temp.http_log() j
           WHERE j->'headers'->>'idempotency-key' = :'r9' || '-1'),
          'Bearer tok-8c1f-SECRET', 'the secret was sent in the header');
SELECT is((SELECT count(*)::int FROM flow_run_steps s WHERE run_id = :'r9' AND s::text LIKE '%tok-8c1f%'), 0,
          'the secret is not in the step row');
SELECT is((SELECT count(*)::int FROM flow_runs r WHERE id = :'r9' AND r::text LIKE '%tok-8c1f%'), 0,
          'the secret is not in the run or its context');
SELECT is((SELECT (pg_temp.step(:'r9')).input->'headers'->>'Authorization'), 'Bearer {secret:t_token}',
          'the step keeps the reference, not the value');
SELECT is(position('tok-8c1f-SECRET' IN pg_read_file(current_setting('fe_test.server_log'))), 0,
          'the secret is in no server log line');
SELECT pg_temp.start('/status/200', '{"headers": {"Authorization": "Bearer {secret:no_such}"}}') AS r10 \gset
SELECT ok(pg_temp.wait_run(:'r10'), 'a missing secret ends its run');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r10'), 'secret "no_such" does not exist',
               'a missing secret is reported by name');

-- 9. a poison run (its next step raises) fails alone; the worker lives on
CREATE FUNCTION pg_temp.t_explode(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'boom after the response'; END $$;
SELECT flow_define(format($${
  "id": "t_poison", "initialState": "call", "finalStates": ["done", "bad"],
  "states": {
    "call": {"actions": [{"executor": "http", "config": {"url": "%s/echo"}},
                         {"executor": "sql", "config": {"function": "%s.t_explode(jsonb)"}}],
             "transitions": {"always": "done", "error": "bad"}},
    "done": {}, "bad": {}}}$$, :'http', pg_my_temp_schema()::regnamespace)::jsonb) \gset
SELECT set_config('fe.p', id::text, false) AS p FROM flow_execute('t_poison') \gset
SELECT ok(pg_temp.wait_run(:'p') OR pg_temp.wait_until(format($$SELECT state = 'bad' FROM flow_runs WHERE id = %L$$, :'p'), 1),
          'a run whose later sql step raises ends');
SELECT is((SELECT state FROM flow_runs WHERE id = :'p'), 'bad', 'and is routed to error');
SELECT pg_temp.start('/echo?after=poison') AS r11 \gset
SELECT ok(pg_temp.wait_run(:'r11'), 'the worker goes on serving runs');
SELECT is((SELECT pid FROM pg_stat_activity WHERE backend_type = 'flow_engine worker'), :worker_pid,
          'the worker never restarted during these tests');

-- 10. a run cancelled while its request is on the wire stays cancelled
SELECT pg_temp.start('/slow/500') AS r12 \gset
SELECT ok(pg_temp.wait_until(format($$SELECT count(*) > 0 FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = %L$$, :'r12' || '-1'), 10),
          'the request is on the wire');
SELECT is((flow_cancel(:'r12')).status, 'cancelled', 'the run is cancelled meanwhile');
SELECT pg_temp.start('/slow/800') AS r13 \gset
SELECT ok(pg_temp.wait_run(:'r13'), 'a later, slower request completes');
SELECT results_eq(format($$SELECT r.status, s.status FROM flow_runs r JOIN flow_run_steps s ON s.run_id = r.id WHERE r.id = %L$$, :'r12'),
          $$VALUES ('cancelled'::text, 'cancelled'::text)$$, 'the late response did not touch the cancelled run');

SELECT * FROM finish();
