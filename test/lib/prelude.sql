-- Shared by every test file: quiet TAP output, the extensions, and helpers.
\set ECHO none
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off
SET client_min_messages = error;
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS flow_engine;
CREATE EXTENSION IF NOT EXISTS dblink;

-- A dblink connection string to this database.
CREATE OR REPLACE FUNCTION pg_temp.connstr() RETURNS text LANGUAGE sql AS $$
  SELECT format('host=%s port=%s dbname=%s user=%s',
                split_part(current_setting('unix_socket_directories'), ',', 1),
                current_setting('port'), current_database(), current_user)
$$;

-- Notifications a dblink listener has received, collected into fe_notes.
CREATE TEMP TABLE IF NOT EXISTS fe_notes (n serial, payload jsonb);
CREATE OR REPLACE FUNCTION pg_temp.collect() RETURNS void LANGUAGE sql AS $$
  INSERT INTO fe_notes (payload) SELECT extra::jsonb FROM dblink_get_notify('listener') WHERE notify_name = 'flow_engine'
$$;
-- Wait, without sleeping blindly, until `want` notifications for run `r` have arrived (or 10 s pass).
CREATE OR REPLACE FUNCTION pg_temp.wait_notes(r uuid, want int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '10 seconds'; got int;
BEGIN
  LOOP
    PERFORM pg_temp.collect();
    SELECT count(*) INTO got FROM fe_notes WHERE payload->>'run' = r::text;
    EXIT WHEN got >= want OR clock_timestamp() > deadline;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RETURN got;
END $$;
-- Wait until `want` backends running a query LIKE `pattern` are blocked on a lock (or 10 s pass).
CREATE OR REPLACE FUNCTION pg_temp.wait_blocked(want int, pattern text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '10 seconds'; got int;
BEGIN
  LOOP
    PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity is otherwise frozen for the transaction
    SELECT count(*) INTO got FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE pattern;
    EXIT WHEN got >= want OR clock_timestamp() > deadline;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RETURN got;
END $$;


-- The detail of the error a statement raises (NULL if it raises none).
CREATE OR REPLACE FUNCTION pg_temp.error_detail(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
  EXECUTE stmt;
  RETURN NULL;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
  RETURN d;
END $$;

-- Wait until the boolean query `cond` is true, up to `timeout_s` seconds;
-- returns whether it became true.  Each check sees the latest commits.
CREATE OR REPLACE FUNCTION pg_temp.wait_until(cond text, timeout_s float8 DEFAULT 30)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
  ok boolean;
BEGIN
  LOOP
    EXECUTE cond INTO ok;
    IF ok THEN RETURN true; END IF;
    IF clock_timestamp() > deadline THEN RETURN false; END IF;
    PERFORM pg_sleep(0.02);
    PERFORM pg_stat_clear_snapshot();   -- pg_stat_activity is otherwise frozen
  END LOOP;
END $$;

-- The requests the loopback test server has received (test/lib/http_server.py).
CREATE OR REPLACE FUNCTION pg_temp.http_log() RETURNS SETOF jsonb LANGUAGE sql AS $$
  SELECT line::jsonb
  FROM regexp_split_to_table(pg_read_file(current_setting('fe_test.http_log')), E'\n') AS line
  WHERE line <> ''
$$;

-- The hint of the error a statement raises (NULL if it raises none).
CREATE OR REPLACE FUNCTION pg_temp.error_hint(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
  EXECUTE stmt;
  RETURN NULL;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
  RETURN h;
END $$;

-- A clean slate: forget every run of the flows whose name is LIKE `pattern`
-- (an earlier, interrupted run of a test file may have left some).
CREATE OR REPLACE FUNCTION pg_temp.forget_runs(pattern text) RETURNS void LANGUAGE sql AS $$
  DELETE FROM flow_run_steps WHERE run_id IN (SELECT id FROM flow_runs WHERE flow LIKE pattern);
  DELETE FROM flow_events WHERE run_id IN (SELECT id FROM flow_runs WHERE flow LIKE pattern);
  DELETE FROM flow_messages WHERE run_id IN (SELECT id FROM flow_runs WHERE flow LIKE pattern);
  DELETE FROM flow_runs WHERE flow LIKE pattern;
$$;

-- One user turn of a conversation that may need the worker: flow_process,
-- commit, and when the run is busy, flow_wait (woken by the worker's
-- commit, not polling).  `reply` is the turn's replies joined with " | ",
-- `state` is "state/status" after it, `first` the status flow_process gave.
CREATE OR REPLACE PROCEDURE pg_temp.turn(flow text, session text, input text,
                                         INOUT reply text DEFAULT NULL, INOUT state text DEFAULT NULL,
                                         INOUT first text DEFAULT NULL, vars jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE t flow_turn;
BEGIN
  t := flow_process(flow, session, input, vars);
  first := t.status;
  COMMIT;
  IF t.status = 'running' THEN
    t := flow_wait(t.run, 20000);
  END IF;
  reply := array_to_string(t.responses, ' | ');
  state := t.state || '/' || t.status;
END $$;
