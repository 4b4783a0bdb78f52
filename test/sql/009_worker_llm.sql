-- llm (providers, fallback, usage and cost, structured output), nlu (with
-- the llm fallback below the threshold) and tool (registry: http and sql)
-- executors, through the worker and the loopback test server.
\i test/lib/prelude.sql
SELECT plan(40);

SELECT current_setting('fe_test.http') AS http \gset

-- providers: the first is down, the second answers, the third is disabled
DELETE FROM flow_providers;
INSERT INTO flow_providers (name, base_url, model, api_key, priority, cost_in_per_1k, cost_out_per_1k, enabled)
VALUES ('down',  :'http' || '/llm/500',       'm-down', 'sk-down-KEY-1', 1, 1, 1, true),
       ('good',  :'http' || '/llm/ok/',       'm-good', 'sk-good-KEY-2', 2, 0.5, 1.5, true),
       ('off',   :'http' || '/llm/ok',        'm-off',  NULL,            0, 0, 0, false),
       ('bad',   :'http' || '/llm/badschema', 'm-bad',  NULL,            9, 0, 0, true),
       ('junk',  :'http' || '/llm/badbody',   'm-junk', NULL,            9, 0, 0, true);

-- each case defines a new version of t_llm with its own llm config
CREATE FUNCTION pg_temp.ask(cfg jsonb) RETURNS uuid LANGUAGE sql AS $$
  SELECT flow_define(jsonb_build_object(
    'id', 't_llm', 'initialState', 'ask', 'finalStates', jsonb_build_array('done', 'bad'),
    'states', jsonb_build_object(
      'ask', jsonb_build_object('actions', jsonb_build_array(
                jsonb_build_object('executor', 'llm', 'output', 'answer', 'config', cfg)),
              'transitions', '{"always": "done", "error": "bad"}'::jsonb),
      'done', '{}'::jsonb,
      'bad', '{"actions": [{"executor": "set", "config": {"why": "{{ event.detail }}"}}]}'::jsonb)));
  SELECT id FROM flow_execute('t_llm');
$$;
CREATE FUNCTION pg_temp.wait_run(run uuid) RETURNS boolean LANGUAGE sql AS $$
  SELECT pg_temp.wait_until(format($q$SELECT status IN ('completed', 'failed') FROM flow_runs WHERE id = %L$q$, run), 30)
$$;

-- 1. fallback in priority order; usage, provider and cost recorded
SELECT pg_temp.ask('{"prompt": "hello Bob", "temperature": 0.2, "max_tokens": 50, "providers": ["down", "good", "off"]}') AS r1 \gset
SELECT ok(pg_temp.wait_run(:'r1'), 'an llm step completes');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r1'), 'done', 'after the first provider failed');
SELECT is((SELECT context->'answer'->>'content' FROM flow_runs WHERE id = :'r1'), 'echo: hello Bob', 'the content is the output');
SELECT is((SELECT context->'answer'->>'provider' FROM flow_runs WHERE id = :'r1'), 'good', 'the answering provider is named');
SELECT results_eq(format($$SELECT provider, model, tokens_in, tokens_out, cost FROM flow_run_steps WHERE run_id = %L AND executor = 'llm'$$, :'r1'),
          $$VALUES ('good'::text, 'm-good'::text, 100, 20, 0.05 + 0.03)$$,
          'the step records provider, model, tokens in and out, and cost from the provider''s prices');
SELECT results_eq(format($$SELECT tokens_in, tokens_out, cost FROM flow_runs WHERE id = %L$$, :'r1'),
          $$VALUES (100::bigint, 20::bigint, 0.08)$$, 'the run totals the tokens and cost');
SELECT is((SELECT array_agg(j->>'path' ORDER BY j->>'at') FROM pg_temp.http_log() j
           WHERE j->'headers'->>'idempotency-key' = :'r1' || '-1'),
          ARRAY['/llm/500/chat/completions', '/llm/ok/chat/completions'],
          'providers were tried in priority order, the disabled one never, with one idempotency key');
SELECT is((SELECT array_agg(j->'headers'->>'authorization' ORDER BY j->>'at') FROM pg_temp.http_log() j
           WHERE j->'headers'->>'idempotency-key' = :'r1' || '-1'),
          ARRAY['Bearer sk-down-KEY-1', 'Bearer sk-good-KEY-2'], 'each provider got its own API key');
SELECT is((SELECT j->'body' FROM pg_temp.http_log() j
           WHERE j->'headers'->>'idempotency-key' = :'r1' || '-1' AND j->>'path' LIKE '/llm/ok/%'),
          '{"model": "m-good", "messages": [{"role": "user", "content": "hello Bob"}], "temperature": 0.2, "max_tokens": 50}'::jsonb,
          'the request is an OpenAI chat completion built from the prompt');
SELECT is((SELECT count(*)::int FROM flow_run_steps s WHERE s::text LIKE '%-KEY-%')
        + (SELECT count(*)::int FROM flow_runs r WHERE r::text LIKE '%-KEY-%')
        + (SELECT count(*)::int FROM flow_events e WHERE e::text LIKE '%-KEY-%'), 0,
          'API keys appear in no step, run, context or event');

-- 2. messages as given; structured output validated against the schema
SELECT pg_temp.ask('{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "order"}],
                     "providers": ["good"],
                     "schema": {"type": "object", "required": ["name", "qty"],
                                "properties": {"name": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}') AS r2 \gset
SELECT ok(pg_temp.wait_run(:'r2'), 'a structured llm step completes');
SELECT is((SELECT context->'answer'->'json' FROM flow_runs WHERE id = :'r2'), '{"name": "pizza", "qty": 2}'::jsonb,
          'valid structured output is parsed into "json"');
SELECT is((SELECT j->'body'->'response_format'->>'type' FROM pg_temp.http_log() j
           WHERE j->'headers'->>'idempotency-key' = :'r2' || '-1'), 'json_schema',
          'the schema is sent as response_format json_schema');

-- 3. output that breaks the schema is retried, then raises error
SELECT pg_temp.ask('{"prompt": "order", "providers": ["bad"], "retry": {"max_attempts": 2, "backoff_ms": 10},
                     "schema": {"type": "object", "required": ["name", "qty"]}}') AS r3 \gset
SELECT ok(pg_temp.wait_run(:'r3'), 'an llm step with invalid structured output ends');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r3'), 'bad', 'it raises the error event');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r3'),
               'does not match the schema: \$: required property "qty" is missing \(after 2 attempts\)',
               'the error says which property is missing, after the retries');
SELECT is((SELECT count(*)::int FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = :'r3' || '-1'), 2,
          'it was asked twice');
SELECT is((SELECT tokens_in FROM flow_run_steps WHERE run_id = :'r3' AND executor = 'llm'), 200,
          'the tokens of rejected answers are counted too');

-- 4. every provider failing raises error, naming each failure
SELECT pg_temp.ask('{"prompt": "x", "providers": ["down", "junk"], "retry": {"max_attempts": 1}}') AS r4 \gset
SELECT ok(pg_temp.wait_run(:'r4'), 'an llm step whose providers all fail ends');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r4'),
               '^every llm provider failed: down: POST .*/llm/500/chat/completions returned HTTP 500: .*; junk: provider returned a body that is not JSON',
               'the error lists each provider''s failure');

-- 5. nlu: the classifier, and the llm below the threshold
SELECT flow_define($${
  "id": "t_nlu", "initialState": "classify", "finalStates": ["done", "bad"],
  "states": {
    "classify": {"actions": [{"executor": "nlu", "output": "nlu",
                              "config": {"url": "{{ url }}", "text": "{{ text }}", "threshold": 0.7,
                                         "intents": ["order_food", "smalltalk"], "providers": ["good"]}}],
                 "conditions": [{"expression": "nlu.intent === 'order_food'", "event": "order"}],
                 "transitions": {"order": "done", "always": "done", "error": "bad"}},
    "done": {}, "bad": {}}}$$) \gset
SELECT id AS n1 FROM flow_execute('t_nlu', jsonb_build_object('url', :'http' || '/nlu', 'text', 'I want a pizza')) \gset
SELECT id AS n2 FROM flow_execute('t_nlu', jsonb_build_object('url', :'http' || '/nlu', 'text', 'hello there')) \gset
SELECT ok(pg_temp.wait_run(:'n1') AND pg_temp.wait_run(:'n2'), 'nlu steps complete');
SELECT is((SELECT context->'nlu' FROM flow_runs WHERE id = :'n1'),
          '{"intent": "order_food", "entities": {"dish": "pizza"}, "confidence": 0.92, "source": "nlu", "below_threshold": false}'::jsonb,
          'a confident classifier answer is stored with intent, entities and confidence');
SELECT is((SELECT context->'nlu'->>'source' FROM flow_runs WHERE id = :'n2'), 'llm',
          'below the threshold the llm classifies');
SELECT is((SELECT context->'nlu'->>'intent' FROM flow_runs WHERE id = :'n2'), 'smalltalk', 'with the llm''s intent');
SELECT is((SELECT context->'nlu'->'classifier'->>'intent' FROM flow_runs WHERE id = :'n2'), 'unknown',
          'keeping what the classifier said');
SELECT is((SELECT provider FROM flow_run_steps WHERE run_id = :'n2' AND executor = 'nlu'), 'good',
          'the llm fallback''s provider and tokens are on the nlu step');
SELECT is((SELECT count(*)::int FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = :'n1' || '-1'), 1,
          'a confident answer needs no llm call');

-- 6. tools: an http tool with a parameter schema, an sql tool, bad calls
DELETE FROM flow_tools WHERE name LIKE 't\_%';
INSERT INTO flow_tools (name, kind, description, parameters, config) VALUES
  ('t_geo', 'http', 'Geocode a city',
   '{"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}, "additionalProperties": false}',
   jsonb_build_object('url', :'http' || '/echo?city={{ params.city }}', 'method', 'POST',
                      'body', jsonb_build_object('q', '{{ params.city.toUpperCase() }}'))),
  ('t_auth', 'http', 'A tool that needs a key', '{"type": "object"}',
   jsonb_build_object('url', :'http' || '/status/200', 'headers', jsonb_build_object('X-Key', '{secret:t_geo_key}'))),
  ('t_dist', 'sql', 'Distance between two points',
   '{"type": "object", "required": ["from", "to"]}', '{"function": "pg_temp.t_dist(jsonb)"}');
INSERT INTO flow_secrets VALUES ('t_geo_key', 'geo-SECRET-77') ON CONFLICT (name) DO UPDATE SET value = excluded.value;
CREATE FUNCTION pg_temp.t_dist(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('km', abs((p->>'to')::int - (p->>'from')::int))
$$;
UPDATE flow_tools SET config = jsonb_build_object('function', pg_my_temp_schema()::regnamespace::text || '.t_dist(jsonb)')
WHERE name = 't_dist';

SELECT flow_define($${
  "id": "t_tool", "initialState": "call", "finalStates": ["done", "bad"],
  "states": {
    "call": {"actions": [{"executor": "tool", "output": "out", "config": {"name": "{{ tool }}", "params": "{{ params }}"}}],
             "transitions": {"always": "done", "error": "bad"}},
    "done": {},
    "bad": {"actions": [{"executor": "set", "config": {"why": "{{ event.message }}", "detail": "{{ event.detail }}"}}]}}}$$) \gset
SELECT id AS t1 FROM flow_execute('t_tool', '{"tool": "t_geo", "params": {"city": "Lagos"}}') \gset
SELECT ok(pg_temp.wait_run(:'t1'), 'an http tool step completes through the worker');
SELECT is((SELECT context->'out'->'body'->>'query' FROM flow_runs WHERE id = :'t1'), 'city=Lagos', 'the tool''s url template saw params');
SELECT is((SELECT context->'out'->'body'->'body' FROM flow_runs WHERE id = :'t1'), '{"q": "LAGOS"}'::jsonb,
          'the tool''s body template was evaluated');
SELECT id AS t2 FROM flow_execute('t_tool', '{"tool": "t_auth", "params": {}}') \gset
SELECT ok(pg_temp.wait_run(:'t2'), 'a tool with a secret completes');
SELECT is((SELECT j->'headers'->>'x-key' FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = :'t2' || '-1'),
          'geo-SECRET-77', 'the tool''s secret was sent');
SELECT is((SELECT count(*)::int FROM flow_run_steps s WHERE run_id = :'t2' AND s::text LIKE '%geo-SECRET%'), 0,
          'and is not in the step');

SELECT results_eq($$SELECT status, context->'out' FROM flow_execute('t_tool', '{"tool": "t_dist", "params": {"from": 3, "to": 10}}')$$,
          $$VALUES ('completed'::text, '{"km": 7}'::jsonb)$$, 'an sql tool runs at once, in the caller''s transaction');
SELECT results_eq($$SELECT state, context->>'why' FROM flow_execute('t_tool', '{"tool": "t_nope", "params": {}}')$$,
          $$VALUES ('bad'::text, 'tool "t_nope" does not exist')$$, 'an unknown tool raises error');
SELECT results_eq($$SELECT state, context->>'why', context->>'detail' FROM flow_execute('t_tool', '{"tool": "t_geo", "params": {"town": "Lagos"}}')$$,
          $$VALUES ('bad'::text, 'parameters of tool "t_geo" do not match its schema',
                    '$: required property "city" is missing (state "call" of flow "t_tool").')$$,
          'parameters that break the tool''s schema raise error, with the path');
SELECT results_eq($$SELECT state, context->>'detail' FROM flow_execute('t_tool', '{"tool": "t_geo", "params": {"city": 7}}')$$,
          $$VALUES ('bad'::text, '$.city: expected string, got number (state "call" of flow "t_tool").')$$,
          'a parameter of the wrong type is refused');
SELECT throws_ok($$INSERT INTO flow_tools (name, kind) VALUES ('t_broken', 'http')$$, '23514', NULL,
          'an http tool without a url is refused');

-- 7. no provider at all: a clear error, not a hang
UPDATE flow_providers SET enabled = false;
SELECT pg_temp.ask('{"prompt": "anyone?"}') AS r5 \gset
SELECT ok(pg_temp.wait_run(:'r5'), 'an llm step with no provider ends');
SELECT matches((SELECT context->>'why' FROM flow_runs WHERE id = :'r5'), 'no llm provider is enabled',
               'and says that no provider is enabled');
UPDATE flow_providers SET enabled = true WHERE name <> 'off';

SELECT * FROM finish();
