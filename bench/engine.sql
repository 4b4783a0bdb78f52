-- bench/engine.sql: setup for bench/run.sh.
-- (a) a 10-state flow of set and decision states that completes;
-- (b) naive bookkeeping tables for the same steps done by hand.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS flow_engine;

SELECT flow_define($${
  "id": "bench10", "initialState": "s1", "finalStates": ["s10"],
  "states": {
    "s1":  {"type": "action",   "actions": [{"executor": "set", "config": {"i": 1, "total": "{{ n * 10 }}"}}], "transitions": {"always": "s2"}},
    "s2":  {"type": "decision", "conditions": [{"expression": "total > 5", "event": "big"}], "transitions": {"big": "s3", "always": "s3"}},
    "s3":  {"type": "action",   "actions": [{"executor": "set", "config": {"i": "{{ i + 1 }}"}}], "transitions": {"always": "s4"}},
    "s4":  {"type": "decision", "conditions": [{"expression": "i === 2", "event": "next"}], "transitions": {"next": "s5", "always": "s5"}},
    "s5":  {"type": "action",   "actions": [{"executor": "set", "config": {"i": "{{ i + 1 }}", "label": "step {{ i }}"}}], "transitions": {"always": "s6"}},
    "s6":  {"type": "decision", "conditions": [{"expression": "label.startsWith('step')", "event": "next"}], "transitions": {"next": "s7", "always": "s7"}},
    "s7":  {"type": "action",   "actions": [{"executor": "set", "config": {"i": "{{ i + 1 }}"}}], "transitions": {"always": "s8"}},
    "s8":  {"type": "decision", "conditions": [{"expression": "i >= 4", "event": "next"}], "transitions": {"next": "s9", "always": "s9"}},
    "s9":  {"type": "action",   "actions": [{"executor": "set", "config": {"i": "{{ i + 1 }}"}}], "transitions": {"always": "s10"}},
    "s10": {"type": "action",   "actions": [{"executor": "set", "config": {"done": true}}]}
  }}$$);

DROP TABLE IF EXISTS naive_steps, naive_runs;
CREATE TABLE naive_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, flow text NOT NULL, status text NOT NULL,
    state text NOT NULL, context jsonb NOT NULL, created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now());
CREATE TABLE naive_steps (
    run_id bigint NOT NULL, seq int NOT NULL, state text NOT NULL, executor text NOT NULL,
    status text NOT NULL, output jsonb, created_at timestamptz DEFAULT now(),
    PRIMARY KEY (run_id, seq));
