-- Setup of bench/turns.sh: a chat flow that answers every message, and the
-- tables an application keeps when it does the same bookkeeping itself.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS flow_engine;
SELECT flow_define('{
  "id": "bench_chat", "initialState": "listen", "finalStates": ["bye"],
  "states": {
    "listen": {"type": "wait", "transitions": {"user_message": "reply", "end": "bye"}},
    "reply": {"type": "action",
      "actions": [{"executor": "set", "config": {"last": "{{ event.text }}"}},
                  {"executor": "respond", "config": {"text": "You said {{ last }}"}}],
      "transitions": {"always": "listen"}},
    "bye": {}}}');
-- 1,000 conversations, each started by a first turn
SELECT count(*) FROM generate_series(1, 1000) g, LATERAL flow_process('bench_chat', 's' || g, 'hi');

-- the baseline: a session row, a messages table, a NOTIFY
DROP TABLE IF EXISTS app_sessions, app_messages;
CREATE TABLE app_sessions (session text PRIMARY KEY, state text NOT NULL, context jsonb NOT NULL,
                           updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE app_messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, session text NOT NULL,
                           role text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON app_messages (session, id);
INSERT INTO app_sessions (session, state, context) SELECT 's' || g, 'listen', '{}' FROM generate_series(1, 1000) g;
