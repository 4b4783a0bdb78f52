-- Conversations: flow_process turns and sessions, intent routing,
-- elicitation, handoff to a human and back, flow_wait, flow_session, the
-- views, and the bad-input cases of the turn API.  This file commits (the
-- worker and a second session must see its runs), so its flows have names
-- of their own.
\i test/lib/prelude.sql
SELECT plan(72);

-- a clean slate if an earlier run of this file was interrupted
SELECT pg_temp.forget_runs('t_conv_%') \g /dev/null

-- seed 002's support call: elicit the issue, decide, check a status tool, resolve or transfer
SELECT flow_define(format($$
{"id": "t_conv_support", "trigger": ["t_support", "t_help"], "initialState": "start", "finalStates": ["resolved", "closed"],
 "states": {
   "start": {"transitions": {"user_message": "ask_issue"}},
   "ask_issue": {
     "elicit": {"variable": "issueCategory", "prompt": "Hi {{ name }}, is your issue technical or billing?",
                "retryPrompt": "Sorry, I did not get that: technical or billing? (try {{ _elicit.attempts + 1 }} of 3)",
                "validate": "/^(technical|billing)\\b/i.test(value)", "maxAttempts": 3},
     "transitions": {"answered": "decide", "exhausted": "transfer"}},
   "decide": {"type": "decision",
              "conditions": [{"expression": "issueCategory.toLowerCase().includes('technical')", "event": "technical"}],
              "transitions": {"technical": "check_status", "always": "transfer"}},
   "check_status": {"actions": [{"executor": "respond", "config": {"text": "Let me check our systems..."}},
                                {"executor": "http", "output": "status", "config": {"url": "%s/slow/200"}}],
                    "transitions": {"always": "resolved", "error": "transfer"}},
   "transfer": {"actions": [{"executor": "respond", "config": {"text": "I am transferring you to a colleague."}},
                            {"executor": "handoff", "config": {"reason": "{{ typeof issueCategory === 'undefined' ? 'no answer' : issueCategory }}", "queue": "support"}}],
                "transitions": {"resume": "resolved", "close": "closed"}},
   "resolved": {"actions": [{"executor": "respond", "config": {"text": "All systems are up ({{ typeof status === 'undefined' ? 'checked by a human' : status.status }}). Bye!"}}]},
   "closed": {}
 }}$$, current_setting('fe_test.http'))::jsonb) \gset
SELECT flow_define('{"id": "t_conv_fallback", "trigger": "*", "initialState": "start", "finalStates": ["done"],
  "states": {"start": {"transitions": {"user_message": "done"}},
             "done": {"actions": [{"executor": "respond", "config": {"text": "Sorry, I can only help with support."}}]}}}') \gset
SELECT flow_define('{"id": "t_conv_other", "initialState": "start", "finalStates": ["done"],
  "states": {"start": {"transitions": {"user_message": "done"}}, "done": {}}}') \gset

-- 1. turns and sessions
SELECT run AS r1, status, state, responses, completed, message_seq
  FROM flow_process('t_conv_support', 'conv:+4411', 'hello', '{"name": "Ann"}') \gset
SELECT is(:'status'::text, 'waiting', 'the first turn starts the run, which waits for the answer');
SELECT is(:'responses'::text, '{"Hi Ann, is your issue technical or billing?"}', 'and returns the question, templated with the first turn''s variables');
SELECT is((SELECT session FROM flow_runs WHERE id = :'r1'), 'conv:+4411', 'the run belongs to the session');
SELECT is((SELECT array_agg(role || ':' || content ORDER BY seq) FROM flow_messages WHERE run_id = :'r1'),
          ARRAY['user:hello', 'assistant:Hi Ann, is your issue technical or billing?'],
          'the conversation holds the user''s turn and the reply, in order');

-- 2. elicitation: an invalid answer is re-asked
SELECT run, state, responses FROM flow_process('t_conv_support', 'conv:+4411', 'my screen', '{"name": "Bob"}') \gset
SELECT is(:'run'::text, :'r1', 'the second turn goes to the same run');
SELECT is(:'state'::text, 'ask_issue', 'an invalid answer leaves the run in the eliciting state');
SELECT is(:'responses'::text, '{"Sorry, I did not get that: technical or billing? (try 2 of 3)"}', 'and re-asks with the retry prompt');
SELECT is((SELECT context->>'name' FROM flow_runs WHERE id = :'r1'), 'Ann', 'variables apply only on the first turn');
SELECT ok((SELECT NOT (context ? 'issueCategory') FROM flow_runs WHERE id = :'r1'), 'nothing is stored from an invalid answer');
SELECT is((SELECT count(*)::int FROM flow_events WHERE run_id = :'r1' AND event = 'user_message'
             AND from_state = 'ask_issue' AND to_state = 'ask_issue'), 1, 'the invalid answer is recorded as an event');

-- a valid answer is stored and the flow decides with seed 002's expression; the status tool needs the worker
SELECT status, state, responses, message_seq AS seq_after FROM flow_process(NULL, 'conv:+4411', '  Technical, my router  ') \gset
SELECT is((SELECT context->>'issueCategory' FROM flow_runs WHERE id = :'r1'), 'Technical, my router', 'a valid answer is stored, trimmed, in the named variable');
SELECT is(:'status'::text, 'running', 'a turn that needs the worker returns running');
SELECT is(:'responses'::text, '{"Let me check our systems..."}', 'with the replies so far');

-- 3. flow_wait: woken at the worker's commit, returns the new replies
SELECT clock_timestamp() AS t0 \gset
SELECT status, responses, completed FROM flow_wait(:'r1', 20000, :seq_after) \gset
SELECT is(:'status'::text, 'completed', 'flow_wait returns when the run leaves running');
SELECT is(:'responses'::text, '{"All systems are up (200). Bye!"}', 'with the replies after the given message');
SELECT ok(:'completed'::bool, 'and says the run completed');
SELECT ok(clock_timestamp() - :'t0'::timestamptz < interval '10 seconds', 'long before its time-out');
SELECT is((flow_wait(:'r1', 1000)).responses, '{"Let me check our systems...","All systems are up (200). Bye!"}',
          'by default flow_wait returns every reply since the last user message');

-- 4. a turn for a finished session starts a new run
SELECT run AS r2, responses FROM flow_process('t_conv_support', 'conv:+4411', 'hi again', '{"name": "Ann"}') \gset
SELECT isnt(:'r2'::text, :'r1', 'a turn for a session whose run finished starts a new run');
SELECT is((SELECT count(*)::int FROM flow_runs WHERE session = 'conv:+4411'), 2, 'the old run is kept');

-- 5. at most one active run per session
SELECT throws_ok($$SELECT flow_execute('t_conv_other', '{}', NULL, 'conv:+4411')$$, '23505',
  'session "conv:+4411" already has an active run', 'flow_execute refuses a second active run in a session');
SELECT throws_ok($$SELECT flow_process('t_conv_other', 'conv:+4411', 'x')$$, '55000',
  'session "conv:+4411" has an active run of flow "t_conv_support", not "t_conv_other"',
  'a turn naming another flow than the session''s active run is refused');
SELECT throws_ok($$INSERT INTO flow_runs (id, flow, version, status, state, context, session)
                   VALUES (gen_random_uuid(), 't_conv_other', 1, 'waiting', 'start', '{}', 'conv:+4411')$$, '23505', NULL,
  'the unique index holds even against direct inserts');

-- 6. exhausted attempts route to the transfer state: a human takes over
SELECT run AS r3 FROM flow_process('t_conv_support', 'conv:+4422', 'hi', '{"name": "Cy"}') \gset
SELECT dblink_connect('listener', pg_temp.connstr()) \gset
SELECT dblink_exec('listener', 'LISTEN flow_engine') \gset
SELECT state FROM flow_process(NULL, 'conv:+4422', 'what?') \gset
SELECT state, responses, handoff FROM flow_process(NULL, 'conv:+4422', 'eh') \gset
SELECT is(:'state'::text, 'ask_issue', 'the second invalid answer is re-asked');
SELECT state, responses, handoff AS h FROM flow_process(NULL, 'conv:+4422', 'no idea') \gset
SELECT is(:'state'::text, 'transfer', 'the third invalid answer raises exhausted, routed to transfer');
SELECT is(:'responses'::text, '{"I am transferring you to a colleague."}', 'the transfer state speaks');
SELECT is(:'h'::jsonb->>'reason', 'no answer', 'the run is marked as handed to a human, with the reason');
SELECT is((SELECT count(*)::int FROM flow_handoffs WHERE id = :'r3' AND queue = 'support'), 1, 'flow_handoffs lists it');
SELECT is(pg_temp.wait_notes(:'r3', 3), 3, 'each of the three turns was notified');
SELECT is((SELECT payload->'handoff'->>'queue' FROM fe_notes WHERE payload->>'run' = :'r3' AND payload ? 'handoff'), 'support',
          'the handoff was notified, with the handoff in the payload');
SELECT is((SELECT max((payload->>'message_seq')::int) FROM fe_notes WHERE payload->>'run' = :'r3'),
          (SELECT message_seq FROM flow_runs WHERE id = :'r3'), 'notifications carry the latest message seq');

-- a human replies; the user writes; the human hands the run back
SELECT flow_human_reply(:'r3', 'Hi Cy, I am Dana from support.') AS hseq \gset
SELECT is((SELECT role || ':' || content FROM flow_messages WHERE run_id = :'r3' AND seq = :hseq),
          'human:Hi Cy, I am Dana from support.', 'a human reply joins the conversation');
SELECT is((SELECT response FROM flow_runs WHERE id = :'r3'), 'Hi Cy, I am Dana from support.', 'and is the run''s response');
SELECT ok(pg_temp.wait_notes(:'r3', 4) = 4, 'and is notified, for the gateway to deliver');
SELECT is((flow_process(NULL, 'conv:+4422', 'thanks Dana')).state, 'transfer', 'the user''s turns still reach the handed-off run');
SELECT is((SELECT status FROM flow_events WHERE run_id = :'r3' AND event = 'user_message' ORDER BY seq DESC LIMIT 1),
          'rejected', 'a message the state does not take is kept as a rejected event, not lost');
SELECT is((flow_resume(:'r3')).status, 'completed', 'flow_resume hands the run back to the flow');
SELECT is((SELECT handoff FROM flow_runs WHERE id = :'r3'), NULL, 'and clears the handoff');
SELECT throws_ok(format('SELECT flow_resume(%L)', :'r2'), '55000', format('flow run %s is not handed off to a human', :'r2'),
  'flow_resume of a run no human holds is refused');

-- 7. flow_session for psql and dashboards
SELECT is((SELECT run FROM flow_session('conv:+4422')), :'r3'::uuid, 'flow_session finds the session''s latest run');
SELECT is((SELECT jsonb_array_length(conversation) FROM flow_session('conv:+4422')),
          (SELECT count(*)::int FROM flow_messages WHERE run_id = :'r3'), 'with the whole conversation');
SELECT is((SELECT conversation->0->>'role' || ':' || (conversation->0->>'content') FROM flow_session('conv:+4422')),
          'user:hi', 'in order, with roles');
SELECT is((SELECT variables->>'name' FROM flow_session('conv:+4422')), 'Cy', 'and the context variables');
SELECT is((SELECT run FROM flow_session('conv:+4411')), :'r2'::uuid, 'an active run is preferred to a finished one');
SELECT is((SELECT count(*)::int FROM flow_session('conv:nobody')), 0, 'an unknown session has no row');
SELECT ok((SELECT count(*) FROM flow_recent_steps WHERE run_id = :'r1' AND executor = 'http' AND status = 'completed') = 1,
          'flow_recent_steps shows the runs'' steps');
SELECT is((SELECT session FROM flow_active_runs WHERE id = :'r2'), 'conv:+4411', 'flow_active_runs shows the session');

-- 8. routing by intent
SELECT is((flow_route('t_help', 'conv:+4433', 'hi', '{"name": "Eve"}')).flow, 't_conv_support', 'a turn is routed to the flow whose trigger has the intent');
SELECT is((flow_route('weather', 'conv:+4433', 'technical')).flow, 't_conv_support', 'a session with an active run keeps it, whatever the intent');
SELECT is((flow_route('weather', 'conv:+4444', 'is it sunny?')).responses, '{"Sorry, I can only help with support."}',
          'an intent no flow declares goes to the "*" flow');

SELECT flow_define('{"id": "t_conv_dup", "trigger": {"intent": "t_help"}, "initialState": "s", "finalStates": ["s"], "states": {"s": {}}}') \gset
SELECT throws_ok($$SELECT flow_route('t_help', 'conv:+4488', 'hi')$$, '21000', 'intent "t_help" is the trigger of 2 flows: t_conv_dup, t_conv_support',
  'an intent two flows claim is refused, naming both');
SELECT flow_define('{"id": "t_conv_dup", "initialState": "s", "finalStates": ["s"], "states": {"s": {}}}') \gset
SELECT is(flow_for_intent('t_help'), 't_conv_support', 'only the latest version of a flow counts');

SELECT flow_define('{"id": "t_conv_fallback", "initialState": "s", "finalStates": ["s"], "states": {"s": {}}}') \gset
SELECT throws_ok($$SELECT flow_route('t_weather', 'conv:+4499', 'hi')$$, '42704', 'no flow is triggered by intent "t_weather"',
  'with no "*" flow, an unknown intent is refused');
SELECT ok(pg_temp.error_detail($$SELECT flow_route('t_weather', 'conv:+4499', 'hi')$$) LIKE 'Flows with a trigger: %t_conv_support (t_support, t_help).',
  'and the detail lists the flows that have triggers');
SELECT is((SELECT count(*)::int FROM flow_runs WHERE session = 'conv:+4499'), 0, 'and no run is started');

-- 9. bad input
SELECT throws_ok($$SELECT flow_process('t_conv_nope', 'conv:+4455', 'hi')$$, '42704', NULL, 'a turn for an unknown flow is refused');
SELECT is((SELECT count(*)::int FROM flow_runs WHERE session = 'conv:+4455'), 0, 'and leaves nothing behind');
SELECT throws_ok($$SELECT flow_process(NULL, 'conv:+4455', 'hi')$$, 'P0002', 'session "conv:+4455" has no active run',
  'a turn with no flow for a session with no active run is refused');
SELECT throws_ok($$SELECT flow_process('t_conv_other', '', 'hi')$$, '22023', 'a turn needs a session', 'a turn without a session is refused');
SELECT throws_ok($$SELECT flow_process('t_conv_other', 'conv:+4455', NULL)$$, '22004', NULL, 'a turn without input is refused');
SELECT throws_ok(format('SELECT flow_message(%L, %L, %L)', :'r1', 'user', 'late'), '55000', format('cannot add a message to flow run %s', :'r1'),
  'a message for a finished run is refused');
SELECT throws_ok(format('SELECT flow_message(%L, %L, %L)', :'r2', 'assistant', 'x'), '22023', 'message role must be "user" or "human", not "assistant"',
  'only user and human messages come from outside');
SELECT throws_ok(format('SELECT flow_wait(%L, -1)', :'r2'), '22023', 'timeout_ms must not be negative', 'a negative time-out is refused');
SELECT throws_ok($$SELECT flow_wait('00000000-0000-0000-0000-000000000000', 10)$$, '42704', NULL, 'waiting for an unknown run is refused');

-- flow_wait inside the turn's own transaction would wait for itself
BEGIN;
SELECT run AS r5 FROM flow_process('t_conv_support', 'conv:+4466', 'hi', '{"name": "Fay"}') \gset
SELECT run AS r5 FROM flow_process(NULL, 'conv:+4466', 'technical') \gset
SELECT throws_ok(format('SELECT flow_wait(%L, 5000)', :'r5'), '55000', 'flow_wait() would wait for its own transaction',
  'flow_wait in the transaction that advanced the run is refused at once');
ROLLBACK;
SELECT is((SELECT count(*)::int FROM flow_runs WHERE session = 'conv:+4466'), 0, 'a rolled-back turn leaves no run');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT throws_ok(format('SELECT flow_wait(%L, 10)', :'r2'), '0A000', NULL, 'flow_wait refuses a snapshot that cannot see progress');
ROLLBACK;

-- 10. a turn while the previous one is running is queued, in order; two sessions deliver turns at once
SELECT run AS r6 FROM flow_process('t_conv_support', 'conv:+4477', 'hi', '{"name": "Gus"}') \gset
SELECT message_seq AS s6 FROM flow_process(NULL, 'conv:+4477', 'technical') \gset
SELECT dblink_connect('a', pg_temp.connstr()) \gset
SELECT dblink_connect('b', pg_temp.connstr()) \gset
SELECT dblink_exec('a', 'BEGIN') \gset
SELECT x FROM dblink('a', $$SELECT status FROM flow_process(NULL, 'conv:+4477', 'first while busy')$$) AS t(x text) \gset
SELECT dblink_send_query('b', $$SELECT status FROM flow_process(NULL, 'conv:+4477', 'second while busy')$$) \gset
SELECT is(pg_temp.wait_blocked(1, '%second while busy%'), 1, 'a second turn of the session waits for the first');
SELECT dblink_exec('a', 'COMMIT') \gset
SELECT is((SELECT x FROM dblink_get_result('b') AS t(x text)), 'running', 'then it is taken too');
SELECT ok(pg_temp.wait_until(format($$SELECT status <> 'running' FROM flow_runs WHERE id = %L$$, :'r6'), 20), 'the run finishes its step');
SELECT is((SELECT array_agg(payload->>'text' ORDER BY seq) FROM flow_events WHERE run_id = :'r6' AND event = 'user_message' AND status <> 'consumed'),
          ARRAY['first while busy', 'second while busy'], 'both busy turns were queued, in order, and none lost');
SELECT is((SELECT array_agg(content ORDER BY seq) FROM flow_messages WHERE run_id = :'r6' AND role = 'user'),
          ARRAY['hi', 'technical', 'first while busy', 'second while busy'], 'every turn is in the conversation, in order');

SELECT dblink_disconnect('a') \gset
SELECT dblink_disconnect('b') \gset
SELECT dblink_disconnect('listener') \gset
SELECT count(flow_cancel(id)) AS cancelled FROM flow_runs WHERE flow LIKE 't_conv_%' AND status IN ('running', 'waiting') \gset
SELECT * FROM finish();
