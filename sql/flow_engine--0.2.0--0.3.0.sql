-- flow_engine 0.2.0 -> 0.3.0: conversations and triggers.
--
-- Sessions (at most one active run each), user turns and their replies
-- (flow_process, flow_route, flow_wait), human handoff, session inspection,
-- psql views, trigger functions for application tables, flow_signal and the
-- dead letters of signals no run took.  Released scripts are frozen; this
-- one is applied by CREATE EXTENSION flow_engine (through 0.1.0 and 0.2.0)
-- and by ALTER EXTENSION flow_engine UPDATE.

\echo Use "ALTER EXTENSION flow_engine UPDATE" to load this file. \quit

-------------------------------------------------------------------------------
-- Sessions and handoff.
-------------------------------------------------------------------------------
ALTER TABLE flow_runs
    ADD COLUMN session text,
    ADD COLUMN handoff jsonb;
COMMENT ON COLUMN flow_runs.session IS 'The conversation the run serves (a phone number, a room); at most one active run per session.';
COMMENT ON COLUMN flow_runs.handoff IS 'While a human has the conversation: the handoff step''s reason and queue, and when.';
CREATE UNIQUE INDEX flow_runs_session_active ON flow_runs (session)
    WHERE session IS NOT NULL AND status IN ('running', 'waiting');
CREATE INDEX flow_runs_session ON flow_runs (session, created_at) WHERE session IS NOT NULL;
CREATE INDEX flow_runs_key_active ON flow_runs (key)
    WHERE key IS NOT NULL AND status IN ('running', 'waiting');

-------------------------------------------------------------------------------
-- Signals that no run took.
-------------------------------------------------------------------------------
CREATE TABLE flow_dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text,
    event       text NOT NULL,
    payload     jsonb,
    flow        text,
    run_id      uuid,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE flow_dead_letters IS 'Events sent by flow_signal() (and the trigger functions) that no active run took, with the reason.';
SELECT pg_catalog.pg_extension_config_dump('flow_dead_letters', '');

-------------------------------------------------------------------------------
-- Starting runs in a session.
-------------------------------------------------------------------------------
DROP FUNCTION flow_execute(text, jsonb, text);
CREATE FUNCTION flow_execute(flow text, input jsonb DEFAULT '{}', key text DEFAULT NULL,
                             session text DEFAULT NULL)
RETURNS flow_run_result
AS 'MODULE_PATHNAME', 'flow_execute'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flow_execute(text, jsonb, text, text) IS 'Starts a run in the caller''s transaction and advances it through every in-database step.';

-------------------------------------------------------------------------------
-- Turns.
-------------------------------------------------------------------------------
CREATE TYPE flow_turn AS (
    run          uuid,
    flow         text,
    session      text,
    status       text,
    state        text,
    responses    text[],
    completed    boolean,
    handoff      jsonb,
    message_seq  integer
);
COMMENT ON TYPE flow_turn IS 'A turn''s result: the run, its status, the replies since message_seq, and whether it completed.';

CREATE FUNCTION flow_message(run uuid, role text, content text, payload jsonb DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'flow_message'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flow_message(uuid, text, text, jsonb) IS 'Stores a user or human message in a run''s conversation and delivers it as user_message or human_message (queued while the run is busy); returns the message''s seq.';

CREATE FUNCTION flow_wait_status(run uuid, timeout_ms integer DEFAULT 30000)
RETURNS text
AS 'MODULE_PATHNAME', 'flow_wait_status'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flow_wait_status(uuid, integer) IS 'Waits (without polling: woken at the commit that changes the run) until the run is no longer running or timeout_ms passes; returns its status.';

-- The turn as seen now: replies after message `after`.
CREATE FUNCTION flow_turn_of(run uuid, after integer)
RETURNS flow_turn
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.flow, r.session, r.status, r.state,
           coalesce((SELECT array_agg(m.content ORDER BY m.seq) FROM flow_messages m
                      WHERE m.run_id = r.id AND m.seq > flow_turn_of.after
                        AND m.role IN ('assistant', 'human')), '{}'),
           r.status = 'completed', r.handoff, r.message_seq
      FROM flow_runs r WHERE r.id = flow_turn_of.run
$$;
COMMENT ON FUNCTION flow_turn_of(uuid, integer) IS 'A run''s status and its assistant and human messages after seq `after`.';

CREATE FUNCTION flow_wait(run uuid, timeout_ms integer DEFAULT 30000, after_seq integer DEFAULT NULL)
RETURNS flow_turn
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flow_wait_status(run, timeout_ms);
    RETURN flow_turn_of(run, coalesce(after_seq,
                                      (SELECT max(m.seq) FROM flow_messages m
                                        WHERE m.run_id = flow_wait.run AND m.role = 'user'),
                                      0));
END $$;
COMMENT ON FUNCTION flow_wait(uuid, integer, integer) IS 'Waits (without polling) until the run is no longer running or the time-out passes, and returns its replies since after_seq (default: its last user message).';

CREATE FUNCTION flow_process(flow text, session text, user_input text, variables jsonb DEFAULT NULL)
RETURNS flow_turn
LANGUAGE plpgsql AS $$
DECLARE
    active   record;
    run_id   uuid;
    after    integer := 0;
    seq      integer;
BEGIN
    IF session IS NULL OR session = '' THEN
        RAISE EXCEPTION 'a turn needs a session'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'flow_process() was called with an empty or NULL session.',
                  HINT = 'Pass the conversation''s id, such as the user''s phone number or the room name.';
    END IF;
    IF user_input IS NULL THEN
        RAISE EXCEPTION 'a turn of session "%" needs the user''s input', session
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'flow_process() was called with a NULL user_input.';
    END IF;
    -- one turn of a session at a time: the next waits here, in order
    PERFORM pg_advisory_xact_lock(hashtextextended('flow_engine.session:' || session, 0));
    SELECT r.id, r.flow, r.status INTO active
      FROM flow_runs r
     WHERE r.session = flow_process.session AND r.status IN ('running', 'waiting');
    IF FOUND THEN
        IF flow_process.flow IS NOT NULL AND active.flow <> flow_process.flow THEN
            RAISE EXCEPTION 'session "%" has an active run of flow "%", not "%"',
                            session, active.flow, flow_process.flow
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = format('Run %s is %s.', active.id, active.status),
                      HINT = 'Pass that flow (or NULL), or end the run with flow_cancel() first.';
        END IF;
        run_id := active.id;
        seq := flow_message(run_id, 'user', user_input,
                            jsonb_build_object('text', user_input, 'session', session));
        after := seq;
    ELSE
        IF flow_process.flow IS NULL THEN
            RAISE EXCEPTION 'session "%" has no active run', session
                USING ERRCODE = 'no_data_found',
                      HINT = 'Name the flow to start, or route the turn by intent with flow_route().';
        END IF;
        run_id := (flow_execute(flow_process.flow, coalesce(variables, '{}'), NULL, session)).id;
        PERFORM flow_message(run_id, 'user', user_input,
                             jsonb_build_object('text', user_input, 'session', session));
    END IF;
    RETURN flow_turn_of(run_id, after);
END $$;
COMMENT ON FUNCTION flow_process(text, text, text, jsonb) IS 'One user turn: starts the session''s run on its first turn (with variables), stores the input and delivers it as user_message; returns the replies.';

-- The flow whose "trigger" names the intent ('*' catches the rest).
CREATE FUNCTION flow_for_intent(intent text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    flows text[];
    known text;
BEGIN
    FOR pass IN 1..2 LOOP
        SELECT array_agg(n.name ORDER BY n.name) INTO flows
          FROM flow_names n
          JOIN flow_definitions d ON d.name = n.name AND d.version = n.latest_version
         WHERE (CASE jsonb_typeof(d.definition->'trigger')
                    WHEN 'string' THEN d.definition->'trigger'
                    WHEN 'array' THEN d.definition->'trigger'
                    WHEN 'object' THEN d.definition->'trigger'->'intent'
                END) @> to_jsonb(CASE pass WHEN 1 THEN intent ELSE '*' END);
        IF cardinality(flows) = 1 THEN
            RETURN flows[1];
        ELSIF cardinality(flows) > 1 THEN
            RAISE EXCEPTION 'intent "%" is the trigger of % flows: %', intent, cardinality(flows),
                            array_to_string(flows, ', ')
                USING ERRCODE = 'cardinality_violation',
                      HINT = 'Give each intent to one flow.';
        END IF;
    END LOOP;
    SELECT string_agg(format('%s (%s)', n.name,
                             (SELECT string_agg(i, ', ')
                                FROM jsonb_array_elements_text(CASE jsonb_typeof(t.intents)
                                                                    WHEN 'array' THEN t.intents
                                                                    ELSE jsonb_build_array(t.intents) END) i)),
                      ', ' ORDER BY n.name) INTO known
      FROM flow_names n
      JOIN flow_definitions d ON d.name = n.name AND d.version = n.latest_version
     CROSS JOIN LATERAL (SELECT CASE jsonb_typeof(d.definition->'trigger')
                                     WHEN 'object' THEN d.definition->'trigger'->'intent'
                                     ELSE d.definition->'trigger' END AS intents) t
     WHERE t.intents IS NOT NULL;
    RAISE EXCEPTION 'no flow is triggered by intent "%"', intent
        USING ERRCODE = 'undefined_object',
              DETAIL = CASE WHEN known IS NULL THEN 'No flow declares a trigger.'
                            ELSE format('Flows with a trigger: %s.', known) END,
              HINT = 'Declare "trigger": "' || intent || '" in a flow, or "trigger": "*" in a fallback flow.';
END $$;
COMMENT ON FUNCTION flow_for_intent(text) IS 'The flow whose latest definition has the intent as its trigger; the "*" flow if none; raises if there is none.';

CREATE FUNCTION flow_route(intent text, session text, user_input text, variables jsonb DEFAULT NULL)
RETURNS flow_turn
LANGUAGE plpgsql AS $$
BEGIN
    IF session IS NOT NULL AND session <> '' THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('flow_engine.session:' || session, 0));
        IF EXISTS (SELECT 1 FROM flow_runs r
                    WHERE r.session = flow_route.session AND r.status IN ('running', 'waiting')) THEN
            RETURN flow_process(NULL, session, user_input, variables);
        END IF;
    END IF;
    RETURN flow_process(flow_for_intent(intent), session, user_input, variables);
END $$;
COMMENT ON FUNCTION flow_route(text, text, text, jsonb) IS 'A turn routed by intent: continues the session''s active run, or starts the flow whose trigger is the intent.';

-------------------------------------------------------------------------------
-- Human handoff.
-------------------------------------------------------------------------------
CREATE FUNCTION flow_human_reply(run uuid, content text)
RETURNS integer
LANGUAGE sql AS $$
    SELECT flow_message(run, 'human', content, jsonb_build_object('text', content))
$$;
COMMENT ON FUNCTION flow_human_reply(uuid, text) IS 'A human agent''s reply: stored in the conversation as the run''s response (and NOTIFY), delivered as human_message if the state takes it.';

CREATE FUNCTION flow_resume(run uuid, event text DEFAULT 'resume', payload jsonb DEFAULT '{}')
RETURNS flow_run_result
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT f.status, f.handoff INTO r FROM flow_runs f WHERE f.id = flow_resume.run FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'flow run % does not exist', run USING ERRCODE = 'undefined_object';
    END IF;
    IF r.handoff IS NULL THEN
        RAISE EXCEPTION 'flow run % is not handed off to a human', run
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('The run is %s.', r.status),
                  HINT = 'Use flow_send() to deliver an event to a run that no human holds.';
    END IF;
    UPDATE flow_runs f SET handoff = NULL WHERE f.id = flow_resume.run;
    RETURN flow_send(run, event, payload);
END $$;
COMMENT ON FUNCTION flow_resume(uuid, text, jsonb) IS 'Gives a handed-off run back to the flow: clears the handoff and delivers the event (default resume).';

-------------------------------------------------------------------------------
-- Inspection.
-------------------------------------------------------------------------------
CREATE FUNCTION flow_session(session text)
RETURNS TABLE (run uuid, flow text, version integer, status text, state text,
               variables jsonb, conversation jsonb, handoff jsonb, response text,
               created_at timestamptz, updated_at timestamptz, finished_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.flow, r.version, r.status, r.state, r.context,
           coalesce((SELECT jsonb_agg(jsonb_build_object('seq', m.seq, 'role', m.role,
                                                         'content', m.content, 'at', m.created_at)
                                      ORDER BY m.seq)
                       FROM flow_messages m WHERE m.run_id = r.id), '[]'),
           r.handoff, r.response, r.created_at, r.updated_at, r.finished_at
      FROM flow_runs r
     WHERE r.session = flow_session.session
     ORDER BY r.status IN ('running', 'waiting') DESC, r.created_at DESC
     LIMIT 1
$$;
COMMENT ON FUNCTION flow_session(text) IS 'The session''s active run (or its latest): status, state, variables and conversation.';

CREATE OR REPLACE VIEW flow_active_runs AS
    SELECT id, flow, version, status, state, key, response,
           queued_events, created_at, updated_at,
           now() - updated_at AS idle_for,
           session, handoff
      FROM flow_runs
     WHERE status IN ('running', 'waiting');

CREATE VIEW flow_recent_steps AS
    SELECT s.run_id, r.flow, r.session, s.seq, s.state, s.executor, s.status, s.attempts,
           s.provider, s.model, s.tokens_in, s.tokens_out, s.cost,
           s.finished_at - s.started_at AS duration,
           s.error->>'message' AS error, s.created_at
      FROM flow_runs r
      JOIN flow_run_steps s ON s.run_id = r.id
     WHERE r.status IN ('running', 'waiting')
        OR r.finished_at > now() - interval '1 hour';
COMMENT ON VIEW flow_recent_steps IS 'Steps of active runs and of runs that finished in the last hour.';

CREATE VIEW flow_handoffs AS
    SELECT r.id, r.flow, r.session, r.state, r.handoff->>'reason' AS reason,
           r.handoff->>'queue' AS queue, (r.handoff->>'at')::timestamptz AS since,
           r.response AS last_response
      FROM flow_runs r
     WHERE r.handoff IS NOT NULL AND r.status IN ('running', 'waiting');
COMMENT ON VIEW flow_handoffs IS 'Conversations a human holds.';

-------------------------------------------------------------------------------
-- Signals and triggers on application tables.
-------------------------------------------------------------------------------
CREATE FUNCTION flow_signal(key text, event text, payload jsonb DEFAULT '{}', flow text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r        record;
    taken    integer := 0;
    refused  integer := 0;
BEGIN
    IF key IS NULL OR event IS NULL THEN
        RAISE EXCEPTION 'flow_signal() needs a key and an event'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR r IN SELECT f.id, f.flow FROM flow_runs f
              WHERE f.key = flow_signal.key AND f.status IN ('running', 'waiting')
                AND (flow_signal.flow IS NULL OR f.flow = flow_signal.flow)
              ORDER BY f.created_at
    LOOP
        BEGIN
            PERFORM flow_send(r.id, event, coalesce(payload, '{}'));
            taken := taken + 1;
        EXCEPTION WHEN invalid_parameter_value OR object_not_in_prerequisite_state THEN
            INSERT INTO flow_dead_letters (key, event, payload, flow, run_id, reason)
            VALUES (flow_signal.key, flow_signal.event, flow_signal.payload, r.flow, r.id, SQLERRM);
            refused := refused + 1;
        END;
    END LOOP;
    IF taken = 0 AND refused = 0 THEN
        INSERT INTO flow_dead_letters (key, event, payload, flow, reason)
        VALUES (flow_signal.key, flow_signal.event, flow_signal.payload, flow_signal.flow,
                format('no active run%s has key "%s"',
                       CASE WHEN flow_signal.flow IS NULL THEN '' ELSE format(' of flow "%s"', flow_signal.flow) END,
                       flow_signal.key));
    END IF;
    RETURN taken;
END $$;
COMMENT ON FUNCTION flow_signal(text, text, jsonb, text) IS 'Sends an event to every active run with the key (queued while a run is busy); returns how many took it. What none took goes to flow_dead_letters.';

CREATE FUNCTION flow_trigger_start()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_json jsonb;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_OP NOT IN ('INSERT', 'UPDATE') OR TG_NARGS NOT IN (1, 2, 3) THEN
        RAISE EXCEPTION 'flow_trigger_start() must be a row trigger on INSERT or UPDATE with 1 to 3 arguments'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Trigger "%s" on %I.%I is a %s trigger on %s with %s arguments.',
                                  TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME, lower(TG_LEVEL), TG_OP, TG_NARGS),
                  HINT = 'CREATE TRIGGER ... AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION flow_trigger_start(''flow'', ''key_column''[, ''session_column'']).';
    END IF;
    row_json := to_jsonb(NEW);
    FOR i IN 1..TG_NARGS - 1 LOOP
        IF NOT row_json ? TG_ARGV[i] THEN
            RAISE EXCEPTION 'column "%" does not exist in table %.%', TG_ARGV[i], TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'undefined_column',
                      DETAIL = format('Trigger "%s" names it as the %s of flow "%s".', TG_NAME,
                                      CASE i WHEN 1 THEN 'run key' ELSE 'session' END, TG_ARGV[0]),
                      HINT = 'Recreate the trigger with a column of the table.';
        END IF;
    END LOOP;
    PERFORM flow_execute(TG_ARGV[0], row_json,
                         CASE WHEN TG_NARGS > 1 THEN row_json->>TG_ARGV[1] END,
                         CASE WHEN TG_NARGS > 2 THEN row_json->>TG_ARGV[2] END);
    RETURN NEW;
END $$;
COMMENT ON FUNCTION flow_trigger_start() IS 'Row trigger: starts a run of flow TG_ARGV[0] with to_jsonb(NEW) as input, the key from column TG_ARGV[1] and the session from column TG_ARGV[2].';

CREATE FUNCTION flow_trigger_event()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_json jsonb;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_NARGS NOT IN (2, 3) THEN
        RAISE EXCEPTION 'flow_trigger_event() must be a row trigger with 2 or 3 arguments'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Trigger "%s" on %I.%I is a %s trigger with %s arguments.',
                                  TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME, lower(TG_LEVEL), TG_NARGS),
                  HINT = 'CREATE TRIGGER ... AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION flow_trigger_event(''event'', ''key_column''[, ''flow'']).';
    END IF;
    row_json := CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END;
    IF NOT row_json ? TG_ARGV[1] THEN
        RAISE EXCEPTION 'column "%" does not exist in table %.%', TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'undefined_column',
                  DETAIL = format('Trigger "%s" names it as the key of the runs that get event "%s".',
                                  TG_NAME, TG_ARGV[0]),
                  HINT = 'Recreate the trigger with a column of the table.';
    END IF;
    PERFORM flow_signal(row_json->>TG_ARGV[1], TG_ARGV[0], row_json,
                        CASE WHEN TG_NARGS > 2 THEN TG_ARGV[2] END);
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
COMMENT ON FUNCTION flow_trigger_event() IS 'Row trigger: sends event TG_ARGV[0], with the row as payload, to the active runs whose key is column TG_ARGV[1] (of flow TG_ARGV[2], if given).';

-------------------------------------------------------------------------------
-- Pruning also forgets old dead letters.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION flow_prune(older_than interval)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
BEGIN
    SELECT array_agg(id) INTO ids
      FROM flow_runs
     WHERE finished_at IS NOT NULL
       AND finished_at < now() - older_than;
    DELETE FROM flow_dead_letters WHERE created_at < now() - older_than;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM flow_run_steps WHERE run_id = ANY (ids);
    DELETE FROM flow_events WHERE run_id = ANY (ids);
    DELETE FROM flow_messages WHERE run_id = ANY (ids);
    DELETE FROM flow_runs WHERE id = ANY (ids);
    RETURN cardinality(ids);
END $$;
