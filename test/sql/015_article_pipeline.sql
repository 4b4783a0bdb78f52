-- Seed 003's article pipeline (examples/article_pipeline), end to end: an
-- insert into articles starts a run in the inserting transaction; the
-- worker makes an extraction LLM call, then a structured-output LLM call
-- (title, summary, key_points, checked against the schema); an sql step
-- writes the result back; the run totals tokens and cost.  The model is the
-- test server's /llm/article, which counts words as tokens.
\i test/lib/prelude.sql
SELECT plan(24);

-- a clean slate
SELECT pg_temp.forget_runs('article_pipeline') \g /dev/null
DROP VIEW IF EXISTS article_results;
DROP TABLE IF EXISTS articles;
SELECT current_setting('fe_test.http') AS svc \gset
DELETE FROM flow_providers;
INSERT INTO flow_providers (name, base_url, model, priority, cost_in_per_1k, cost_out_per_1k)
VALUES ('mock', :'svc' || '/llm/article', 'mock-article-1', 1, 0.5, 1.5);
\i examples/article_pipeline/tools.sql
\set article_flow `cat examples/article_pipeline/flow.json`
SELECT is_empty(format('SELECT * FROM flow_validate(%L)', :'article_flow'), 'the article flow validates cleanly');
SELECT flow_define(:'article_flow') \g /dev/null

-- Tokens the mock model counts for a run: words in every request's messages
-- (the http log holds the requests), which is what the model reports.
CREATE FUNCTION pg_temp.words_sent(run uuid) RETURNS bigint LANGUAGE sql AS $$
  SELECT sum(array_length(regexp_split_to_array(btrim(m->>'content', E' \n'), '\s+'), 1))
    FROM pg_temp.http_log() j, jsonb_array_elements(j->'body'->'messages') m
   WHERE j->'headers'->>'idempotency-key' LIKE run::text || '-%'
$$;
CREATE FUNCTION pg_temp.finished(article bigint) RETURNS boolean LANGUAGE sql AS $$
  SELECT pg_temp.wait_until(format($q$SELECT status IN ('completed', 'failed') FROM flow_runs
                                     WHERE flow = 'article_pipeline' AND key = '%s'$q$, article), 30)
$$;

-- 1. an insert that rolls back starts nothing
BEGIN;
INSERT INTO articles (body) VALUES ('This article is never committed. Nobody reads it.');
SELECT is((SELECT count(*)::int FROM flow_runs WHERE flow = 'article_pipeline'), 1, 'the insert starts a run in its own transaction');
ROLLBACK;
SELECT is((SELECT count(*)::int FROM flow_runs WHERE flow = 'article_pipeline'), 0, 'after the rollback, no run exists');

-- 2. one article, end to end
INSERT INTO articles (url, body) VALUES ('https://example.com/pg18',
  'PostgreSQL 18 is out. It brings asynchronous I/O! Upgrades keep planner statistics. Skip scans help multicolumn indexes. Virtual generated columns are the default.')
RETURNING id AS a1 \gset
SELECT id AS r1 FROM flow_runs WHERE flow = 'article_pipeline' AND key = :'a1'::text \gset
SELECT ok(pg_temp.finished(:a1), 'the run finishes');
SELECT results_eq(format('SELECT status, state FROM flow_runs WHERE id = %L', :'r1'), $$VALUES ('completed'::text, 'done'::text)$$,
  'and completes in done');
SELECT results_eq(format('SELECT status, title, summary, key_points FROM articles WHERE id = %s', :a1),
  $$VALUES ('summarised'::text, 'Postgresql 18 Is Out'::text, 'PostgreSQL 18 is out. It brings asynchronous I/O.'::text,
            '["PostgreSQL 18 is out.", "It brings asynchronous I/O.", "Upgrades keep planner statistics."]'::jsonb)$$,
  'the structured summary was written to the article row by the sql step');
SELECT is((SELECT extracted FROM articles WHERE id = :a1),
  'PostgreSQL 18 is out. It brings asynchronous I/O. Upgrades keep planner statistics. Skip scans help multicolumn indexes.',
  'so was the extraction');
SELECT is((SELECT j->'body'->'messages'->1->>'content' FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = :'r1' || '-1'),
  E'Extract the main content of this article in at most 500 characters.\n\n' || (SELECT body FROM articles WHERE id = :a1),
  'the extraction prompt holds the article and the default max_length');
SELECT is((SELECT j->'body'->'messages'->1->>'content' FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = :'r1' || '-2'),
  E'Give this article a title, a two-sentence summary and at most five key points.\n\n' || (SELECT extracted FROM articles WHERE id = :a1),
  'the summary prompt holds the extraction: the steps are chained through the context');
SELECT results_eq(format($$SELECT j->'body'->'response_format'->>'type', j->'body'->'response_format'->'json_schema'->'schema'->'required'
                             FROM pg_temp.http_log() j WHERE j->'headers'->>'idempotency-key' = '%s-2'$$, :'r1'),
  $$VALUES ('json_schema'::text, '["title", "summary", "key_points"]'::jsonb)$$, 'the summary step asked for structured output with the schema');
SELECT results_eq(format($$SELECT state, provider, model FROM flow_run_steps WHERE run_id = %L AND executor = 'llm' ORDER BY seq$$, :'r1'),
  $$VALUES ('extract'::text, 'mock'::text, 'mock-article-1'::text), ('summarize', 'mock', 'mock-article-1')$$,
  'both llm steps record the provider and model');
SELECT ok((SELECT bool_and(tokens_in > 0 AND tokens_out > 0) FROM flow_run_steps WHERE run_id = :'r1' AND executor = 'llm'),
  'each llm step records its tokens');
SELECT is((SELECT tokens_in FROM flow_runs WHERE id = :'r1'), pg_temp.words_sent(:'r1'),
  'the run''s tokens_in is what the model counted over both requests');
SELECT results_eq(format($$SELECT r.tokens_in, r.tokens_out, r.cost FROM flow_runs r WHERE r.id = %L$$, :'r1'),
  format($$SELECT sum(tokens_in)::bigint, sum(tokens_out)::bigint, sum(cost) FROM flow_run_steps WHERE run_id = %L$$, :'r1'),
  'the run''s tokens and cost are the totals of its steps');
SELECT is((SELECT cost FROM flow_runs WHERE id = :'r1'),
  (SELECT round(tokens_in * 0.5 / 1000 + tokens_out * 1.5 / 1000, 6) FROM flow_runs WHERE id = :'r1'),
  'cost is tokens / 1000 × the provider''s prices');
SELECT results_eq(format('SELECT status, run_status, tokens_in, cost FROM article_results WHERE id = %s', :a1),
  format('SELECT ''summarised''::text, ''completed''::text, tokens_in, cost FROM flow_runs WHERE id = %L', :'r1'),
  'article_results shows the article with its run''s totals');

-- 3. max_length from the row
INSERT INTO articles (body, max_length) VALUES ('Short news. Very short indeed.', 120) RETURNING id AS a2 \gset
SELECT ok(pg_temp.finished(:a2), 'a second article finishes');
SELECT ok((SELECT j->'body'->'messages'->1->>'content' FROM pg_temp.http_log() j, flow_runs r
            WHERE r.flow = 'article_pipeline' AND r.key = :'a2'::text AND j->'headers'->>'idempotency-key' = r.id || '-1')
          LIKE 'Extract the main content of this article in at most 120 characters.%', 'the row''s max_length is in the prompt');

-- 4. an answer that breaks the schema: retried, then the article fails
INSERT INTO articles (body) VALUES ('This text says BREAK-SCHEMA. The model answers key points as one string.') RETURNING id AS a3 \gset
SELECT id AS r3 FROM flow_runs WHERE flow = 'article_pipeline' AND key = :'a3'::text \gset
SELECT ok(pg_temp.finished(:a3), 'the run with a bad answer finishes');
SELECT results_eq(format('SELECT state, status FROM flow_runs WHERE id = %L', :'r3'), $$VALUES ('failed'::text, 'completed'::text)$$,
  'it took the error transition to failed');
SELECT ok((SELECT error FROM articles WHERE id = :a3) LIKE '%does not match the schema: $.key_points: expected array, got string%',
  'the article row keeps the schema error');
SELECT is((SELECT attempts FROM flow_run_steps WHERE run_id = :'r3' AND state = 'summarize'), 2, 'the summary was tried twice');
SELECT is((SELECT tokens_in FROM flow_runs WHERE id = :'r3'), pg_temp.words_sent(:'r3'),
  'the tokens of rejected answers are counted too');

-- 5. a batch in one transaction: every article is summarised
INSERT INTO articles (body) SELECT format('Batch article %s. It has two sentences.', g) FROM generate_series(1, 5) g;
SELECT ok(pg_temp.wait_until($$SELECT count(*) = 5 FROM articles WHERE body LIKE 'Batch article %' AND status = 'summarised'$$, 30),
  'five articles inserted in one statement are all summarised');

SELECT * FROM finish();
