-- flow_engine 0.3.0 -> 0.4.0: a conversation's run is keyed by its session.
--
-- flow_process() now starts a session's run with the session as the run's
-- key, so flow_signal(session, ...) and flow_trigger_event(event, column)
-- on a table that holds the session (a payment row with the customer's
-- phone number) reach the conversation.  Released scripts are frozen; this
-- one is applied by CREATE EXTENSION flow_engine and by ALTER EXTENSION
-- flow_engine UPDATE.

\echo Use "ALTER EXTENSION flow_engine UPDATE" to load this file. \quit

CREATE OR REPLACE FUNCTION flow_process(flow text, session text, user_input text, variables jsonb DEFAULT NULL)
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
        run_id := (flow_execute(flow_process.flow, coalesce(variables, '{}'), session, session)).id;
        PERFORM flow_message(run_id, 'user', user_input,
                             jsonb_build_object('text', user_input, 'session', session));
    END IF;
    RETURN flow_turn_of(run_id, after);
END $$;
COMMENT ON FUNCTION flow_process(text, text, text, jsonb) IS 'One user turn: starts the session''s run on its first turn (with variables, and the session as its key), stores the input and delivers it as user_message; returns the replies.';
