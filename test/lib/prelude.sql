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
