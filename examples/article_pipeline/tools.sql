-- The article pipeline example (seed 003): an articles table whose inserts
-- start a run, the two SQL functions that write the result back, and a view
-- with each article's result and its run's token and cost totals.
-- The LLM is whatever flow_providers holds (the tests point a provider at
-- the test server's /llm/article model).
CREATE TABLE IF NOT EXISTS articles (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url         text,
    body        text NOT NULL,
    max_length  int NOT NULL DEFAULT 500 CHECK (max_length > 0),
    status      text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'summarised', 'failed')),
    extracted   text,
    title       text,
    summary     text,
    key_points  jsonb,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz);

-- Every new article starts a run, keyed by the article's id, in the
-- inserting transaction: an insert that rolls back starts nothing.
DROP TRIGGER IF EXISTS article_pipeline_start ON articles;
CREATE TRIGGER article_pipeline_start AFTER INSERT ON articles
    FOR EACH ROW EXECUTE FUNCTION flow_trigger_start('article_pipeline', 'id');

CREATE OR REPLACE FUNCTION article_store(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  UPDATE articles SET status = 'summarised', extracted = a->>'extracted', title = a->>'title',
                      summary = a->>'summary', key_points = a->'key_points', finished_at = now()
   WHERE id = (a->>'id')::bigint
  RETURNING jsonb_build_object('id', id, 'status', status)
$$;

CREATE OR REPLACE FUNCTION article_failed(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  UPDATE articles SET status = 'failed', error = a->>'error', finished_at = now()
   WHERE id = (a->>'id')::bigint
  RETURNING jsonb_build_object('id', id, 'status', status)
$$;

-- Each article with its run: status, tokens and cost (the run totals its LLM steps).
CREATE OR REPLACE VIEW article_results AS
SELECT a.id, a.status, a.title, a.summary, a.key_points, a.error,
       r.id AS run_id, r.status AS run_status, r.tokens_in, r.tokens_out, r.cost
  FROM articles a
  LEFT JOIN flow_runs r ON r.flow = 'article_pipeline' AND r.key = a.id::text;
