-- flow_engine 0.1.0 -> 0.2.0: the background worker.
--
-- Adds what the worker needs: step leases, run timers, the LLM providers,
-- the tool registry and secrets.  Released scripts are frozen; this one is
-- applied by CREATE EXTENSION flow_engine (through 0.1.0) and by
-- ALTER EXTENSION flow_engine UPDATE.

\echo Use "ALTER EXTENSION flow_engine UPDATE" to load this file. \quit

-------------------------------------------------------------------------------
-- Steps: a claimed step is 'running' with a lease; the worker re-sends it if
-- the lease runs out (or at its own start, after a crash).
-------------------------------------------------------------------------------
ALTER TABLE flow_run_steps
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN model text;
COMMENT ON COLUMN flow_run_steps.lease_until IS 'While running: when the worker''s claim on the step lapses.';
COMMENT ON COLUMN flow_run_steps.due_at IS 'While pending: when the worker may send the step (retry backoff).';
CREATE INDEX flow_run_steps_leased ON flow_run_steps (lease_until) WHERE status = 'running';

-------------------------------------------------------------------------------
-- Timers: a run waiting in a state with a "timeout" has timeout_at set.
-------------------------------------------------------------------------------
ALTER TABLE flow_runs ADD COLUMN timeout_at timestamptz;
COMMENT ON COLUMN flow_runs.timeout_at IS 'When the worker sends the "timeout" event, if the run still waits in its state.';
CREATE INDEX flow_runs_timeout ON flow_runs (timeout_at) WHERE timeout_at IS NOT NULL;

ALTER TABLE flow_events DROP CONSTRAINT flow_events_source_check;
ALTER TABLE flow_events ADD CONSTRAINT flow_events_source_check
    CHECK (source IN ('start', 'external', 'condition', 'always', 'result', 'error', 'timer'));

-------------------------------------------------------------------------------
-- LLM providers, tried in priority order (lowest first).
-------------------------------------------------------------------------------
CREATE TABLE flow_providers (
    name             text PRIMARY KEY,
    base_url         text NOT NULL CHECK (base_url ~ '^https?://'),
    model            text NOT NULL,
    api_key          text,
    priority         integer NOT NULL DEFAULT 100,
    cost_in_per_1k   numeric NOT NULL DEFAULT 0 CHECK (cost_in_per_1k >= 0),
    cost_out_per_1k  numeric NOT NULL DEFAULT 0 CHECK (cost_out_per_1k >= 0),
    timeout_ms       integer CHECK (timeout_ms > 0),
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE flow_providers IS 'OpenAI-compatible chat providers for the llm and nlu executors; api_key is sent by the worker and never stored elsewhere.';
REVOKE ALL ON flow_providers FROM PUBLIC;

-------------------------------------------------------------------------------
-- Tools: named http or sql tools with a parameter schema.
-------------------------------------------------------------------------------
CREATE TABLE flow_tools (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.-]*$'),
    kind         text NOT NULL CHECK (kind IN ('http', 'sql')),
    description  text NOT NULL DEFAULT '',
    parameters   jsonb NOT NULL DEFAULT '{"type": "object"}',
    config       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (jsonb_typeof(parameters) = 'object'),
    CHECK (jsonb_typeof(config) = 'object'),
    CHECK (kind <> 'http' OR config ? 'url'),
    CHECK (kind <> 'sql' OR config ? 'function')
);
COMMENT ON TABLE flow_tools IS 'The tool registry: an http tool has a templated request in config (url, method, headers, body, timeout_ms, retry); an sql tool names a function(jsonb) in config.function.';

-------------------------------------------------------------------------------
-- Secrets: referenced as {secret:NAME} in http urls, headers and bodies, and
-- substituted by the worker only when it sends the request.
-------------------------------------------------------------------------------
CREATE TABLE flow_secrets (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE flow_secrets IS 'Values the worker substitutes for {secret:NAME} at send time; never copied into steps, contexts, notifications or logs.';
REVOKE ALL ON flow_secrets FROM PUBLIC;

-- These three tables are configuration a restore needs: pg_dump copies them.
SELECT pg_catalog.pg_extension_config_dump('flow_providers', '');
SELECT pg_catalog.pg_extension_config_dump('flow_tools', '');
SELECT pg_catalog.pg_extension_config_dump('flow_secrets', '');

-------------------------------------------------------------------------------
-- The worker.
-------------------------------------------------------------------------------
CREATE FUNCTION flow_worker_wake() RETURNS void
LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'flow_worker_wake';
COMMENT ON FUNCTION flow_worker_wake() IS 'Wake the worker when this transaction commits.';

-- The worker serves one database; say so when the extension lands elsewhere.
DO $$
DECLARE
    served text := current_setting('flow_engine.database', true);
BEGIN
    IF served IS NULL THEN
        RAISE WARNING 'flow_engine is not in shared_preload_libraries, so its worker is not running'
            USING DETAIL = 'Runs that reach an http, llm, nlu or tool step, or a state timeout, will wait until a worker serves them.',
                  HINT = 'Add flow_engine to shared_preload_libraries, set flow_engine.database, and restart the server.';
    ELSIF served <> current_database() THEN
        RAISE WARNING 'the flow_engine worker serves database "%", not "%"', served, current_database()
            USING DETAIL = 'Runs in this database that reach an http, llm, nlu or tool step, or a state timeout, will wait.',
                  HINT = format('Set flow_engine.database = %L in postgresql.conf and restart the server.', current_database());
    END IF;
END $$;

SELECT flow_worker_wake();
