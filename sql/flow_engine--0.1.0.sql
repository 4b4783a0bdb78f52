-- flow_engine 0.1.0 install script.
--
-- Released install scripts are frozen: later changes ship as
-- sql/flow_engine--0.1.0--X.sql upgrade scripts.
--
-- Every hot-path table is keyed by run id first, so that runs can be
-- distributed by run id (Citus) and history can be pruned run by run.

\echo Use "CREATE EXTENSION flow_engine" to load this file. \quit

-------------------------------------------------------------------------------
-- Definitions: one row per immutable version.
-------------------------------------------------------------------------------
CREATE TABLE flow_names (
    name            text PRIMARY KEY,
    latest_version  integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE flow_names IS 'One row per flow name; serialises concurrent flow_define calls.';

CREATE TABLE flow_definitions (
    name        text NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  name NOT NULL DEFAULT current_user,
    PRIMARY KEY (name, version)
);
COMMENT ON TABLE flow_definitions IS 'Immutable flow versions; runs keep the version they started on.';

CREATE FUNCTION flow_definitions_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'flow definitions are immutable'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = format('Version %s of flow "%s" is referenced by runs and cannot change.', OLD.version, OLD.name),
              HINT = 'Call flow_define() to store a new version.';
END $$;

CREATE TRIGGER flow_definitions_immutable
    BEFORE UPDATE OR DELETE ON flow_definitions
    FOR EACH ROW EXECUTE FUNCTION flow_definitions_immutable();

-------------------------------------------------------------------------------
-- Runs.
-------------------------------------------------------------------------------
CREATE TABLE flow_runs (
    id             uuid PRIMARY KEY,
    flow           text NOT NULL,
    version        integer NOT NULL,
    status         text NOT NULL
                   CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    state          text NOT NULL,
    context        jsonb NOT NULL,
    response       text,
    key            text,
    error          jsonb,
    cursor         jsonb,
    step_seq       integer NOT NULL DEFAULT 0,
    event_seq      integer NOT NULL DEFAULT 0,
    message_seq    integer NOT NULL DEFAULT 0,
    queued_events  integer NOT NULL DEFAULT 0,
    tokens_in      bigint NOT NULL DEFAULT 0,
    tokens_out     bigint NOT NULL DEFAULT 0,
    cost           numeric NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
COMMENT ON TABLE flow_runs IS 'One row per run; advanced only by flow_engine functions.';
COMMENT ON COLUMN flow_runs.cursor IS 'Where to resume when a pending asynchronous step completes (internal).';

CREATE INDEX flow_runs_key ON flow_runs (key) WHERE key IS NOT NULL;
CREATE INDEX flow_runs_finished ON flow_runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX flow_runs_active ON flow_runs (flow, state) WHERE status IN ('running', 'waiting');

CREATE TABLE flow_run_steps (
    run_id       uuid NOT NULL,
    seq          integer NOT NULL,
    state        text NOT NULL,
    phase        text NOT NULL CHECK (phase IN ('onEntry', 'actions', 'onExit')),
    action       integer NOT NULL,
    executor     text NOT NULL,
    status       text NOT NULL
                 CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input        jsonb,
    output       jsonb,
    error        jsonb,
    attempts     integer NOT NULL DEFAULT 0,
    tokens_in    integer,
    tokens_out   integer,
    cost         numeric,
    provider     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    due_at       timestamptz,
    PRIMARY KEY (run_id, seq)
);
COMMENT ON TABLE flow_run_steps IS 'One row per executed action; pending rows are the worker''s queue.';

CREATE INDEX flow_run_steps_pending ON flow_run_steps (due_at) WHERE status = 'pending';

CREATE TABLE flow_events (
    run_id       uuid NOT NULL,
    seq          integer NOT NULL,
    event        text NOT NULL,
    source       text NOT NULL
                 CHECK (source IN ('start', 'external', 'condition', 'always', 'result', 'error')),
    payload      jsonb,
    status       text NOT NULL CHECK (status IN ('queued', 'consumed', 'rejected')),
    from_state   text,
    to_state     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    consumed_at  timestamptz,
    PRIMARY KEY (run_id, seq)
);
COMMENT ON TABLE flow_events IS 'Every transition of every run, and external events with their payloads (queued ones are the run''s inbox).';

CREATE TABLE flow_messages (
    run_id      uuid NOT NULL,
    seq         integer NOT NULL,
    role        text NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'human')),
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);
COMMENT ON TABLE flow_messages IS 'The conversation of each run.';

-------------------------------------------------------------------------------
-- Result types.
-------------------------------------------------------------------------------
CREATE TYPE flow_run_result AS (
    id        uuid,
    flow      text,
    version   integer,
    status    text,
    state     text,
    context   jsonb,
    response  text,
    error     jsonb
);

-------------------------------------------------------------------------------
-- Definitions API.
-------------------------------------------------------------------------------
CREATE FUNCTION flow_validate(definition jsonb,
                              OUT path text, OUT severity text, OUT message text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'flow_validate'
LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION flow_validate(jsonb) IS 'Lists every problem of a definition; never raises for a bad definition.';

CREATE FUNCTION flow_define(definition jsonb, OUT name text, OUT version integer)
RETURNS record
AS 'MODULE_PATHNAME', 'flow_define'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION flow_define(jsonb) IS 'Stores a new immutable version of the flow named by the definition''s "id".';

CREATE FUNCTION flow_get(flow text, version integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT d.definition
      FROM flow_definitions d
     WHERE d.name = flow_get.flow
       AND (flow_get.version IS NULL OR d.version = flow_get.version)
     ORDER BY d.version DESC
     LIMIT 1
$$;
COMMENT ON FUNCTION flow_get(text, integer) IS 'Returns a definition: the given version, or the latest.';

CREATE FUNCTION flow_list()
RETURNS TABLE (name text, latest_version integer, versions bigint,
               created_at timestamptz, updated_at timestamptz, description text)
LANGUAGE sql STABLE AS $$
    SELECT n.name, n.latest_version,
           (SELECT count(*) FROM flow_definitions d WHERE d.name = n.name),
           n.created_at, n.updated_at,
           (SELECT d.definition->>'description' FROM flow_definitions d
             WHERE d.name = n.name AND d.version = n.latest_version)
      FROM flow_names n
     ORDER BY n.name
$$;
COMMENT ON FUNCTION flow_list() IS 'Lists flows with their latest version and version count.';

-------------------------------------------------------------------------------
-- Runs API.
-------------------------------------------------------------------------------
CREATE FUNCTION flow_execute(flow text, input jsonb DEFAULT '{}', key text DEFAULT NULL)
RETURNS flow_run_result
AS 'MODULE_PATHNAME', 'flow_execute'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flow_execute(text, jsonb, text) IS 'Starts a run in the caller''s transaction and advances it through every in-database step.';

CREATE FUNCTION flow_send(run uuid, event text, payload jsonb DEFAULT '{}')
RETURNS flow_run_result
AS 'MODULE_PATHNAME', 'flow_send'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flow_send(uuid, text, jsonb) IS 'Delivers an event to a run (or queues it while the run is busy) and advances it.';

CREATE FUNCTION flow_cancel(run uuid)
RETURNS flow_run_result
AS 'MODULE_PATHNAME', 'flow_cancel'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION flow_cancel(uuid) IS 'Cancels a run that has not finished.';

CREATE FUNCTION flow_step_complete(run uuid, step integer, output jsonb DEFAULT NULL, error text DEFAULT NULL)
RETURNS flow_run_result
AS 'MODULE_PATHNAME', 'flow_step_complete'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flow_step_complete(uuid, integer, jsonb, text) IS 'Completes a pending asynchronous step (the worker''s entry point; also usable by external executors) and advances the run.';

CREATE FUNCTION flow_run(run uuid)
RETURNS flow_run_result
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.flow, r.version, r.status, r.state, r.context, r.response, r.error
      FROM flow_runs r WHERE r.id = flow_run.run
$$;
COMMENT ON FUNCTION flow_run(uuid) IS 'Returns a run as flow_execute() does, without advancing it.';

CREATE FUNCTION flow_prune(older_than interval)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
BEGIN
    SELECT array_agg(id) INTO ids
      FROM flow_runs
     WHERE finished_at IS NOT NULL
       AND finished_at < now() - older_than;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM flow_run_steps WHERE run_id = ANY (ids);
    DELETE FROM flow_events WHERE run_id = ANY (ids);
    DELETE FROM flow_messages WHERE run_id = ANY (ids);
    DELETE FROM flow_runs WHERE id = ANY (ids);
    RETURN cardinality(ids);
END $$;
COMMENT ON FUNCTION flow_prune(interval) IS 'Deletes finished runs (and their steps, events and messages) that finished before now() - older_than.';

-------------------------------------------------------------------------------
-- Inspection views.
-------------------------------------------------------------------------------
CREATE VIEW flow_active_runs AS
    SELECT id, flow, version, status, state, key, response,
           queued_events, created_at, updated_at,
           now() - updated_at AS idle_for
      FROM flow_runs
     WHERE status IN ('running', 'waiting');
COMMENT ON VIEW flow_active_runs IS 'Runs that have not finished.';
