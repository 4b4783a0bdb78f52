-- Seed 002's phone support agent, from examples/support_call itself, turn
-- by turn: elicit the issue category, decide with
-- issueCategory.toLowerCase().includes('technical'), call the status tool
-- (an http tool the worker sends), then resolve or transfer to a human.
-- test/chat.sh drives the same flow through the Node.js client.
\i test/lib/prelude.sql
SELECT plan(21);

SELECT pg_temp.forget_runs('support_call') \g /dev/null
SELECT current_setting('fe_test.http') || '/slow/50' AS status_url \gset
\i examples/support_call/tools.sql
\set support_flow `cat examples/support_call/flow.json`
SELECT is_empty(format('SELECT * FROM flow_validate(%L)', :'support_flow'), 'the support-call flow validates cleanly');
SELECT flow_define(:'support_flow') \g /dev/null

-- 1. a technical issue, solved
CALL pg_temp.turn('support_call', 'call:+15550001', 'hi', vars => '{"name": "Ann"}') \gset
SELECT is(:'reply'::text, 'Hello Ann, I am the support assistant. Is your issue technical or about billing?', 'the agent greets by name and asks');
CALL pg_temp.turn('support_call', 'call:+15550001', 'my cat ate the cable') \gset
SELECT is(:'reply'::text, 'Sorry, I did not catch that. Please say technical or billing.', 'an answer that matches neither is asked again');
CALL pg_temp.turn('support_call', 'call:+15550001', 'Technical, the internet is down') \gset
SELECT is(:'first'::text, 'running', 'a technical issue calls the status tool, through the worker');
SELECT is(:'reply'::text,
  'I understand you''re having a technical issue. Let me check our system status... | All systems are operational (status 200). Restarting your router usually fixes this. Did that help? (yes/no)',
  'flow_wait returns both replies of the turn');
SELECT is((SELECT context->>'issueCategory' FROM flow_runs WHERE session = 'call:+15550001'), 'Technical, the internet is down',
  'the answer is stored in issueCategory');
SELECT ok(NOT (SELECT variables ? '_elicit' FROM flow_session('call:+15550001')),
  'the attempt counter of the answered question is gone from the variables');
SELECT is((SELECT j->>'path' FROM pg_temp.http_log() j, flow_runs r
            WHERE r.session = 'call:+15550001' AND j->'headers'->>'idempotency-key' LIKE r.id || '-%'), '/slow/50',
  'the status tool was called once');
CALL pg_temp.turn('support_call', 'call:+15550001', 'yes, thanks') \gset
SELECT is(:'reply'::text, 'Glad I could help. Goodbye!', 'resolved');
SELECT is(:'state'::text, 'resolved/completed', 'the run completed in resolved');
SELECT results_eq($$SELECT status, variables->>'name' FROM flow_session('call:+15550001')$$,
  $$VALUES ('completed'::text, 'Ann'::text)$$, 'flow_session shows the finished conversation and its variables');

-- 2. billing goes to a human, who closes it
CALL pg_temp.turn('support_call', 'call:+15550002', 'hello') \gset
SELECT is(:'reply'::text, 'Hello there, I am the support assistant. Is your issue technical or about billing?', 'no name: "there"');
CALL pg_temp.turn('support_call', 'call:+15550002', 'billing') \gset
SELECT is(:'reply'::text, 'Let me transfer you to a colleague who can help.', 'a billing issue is transferred at once');
SELECT results_eq($$SELECT reason, queue FROM flow_handoffs h JOIN flow_runs r ON r.id = h.id WHERE r.session = 'call:+15550002'$$,
  $$VALUES ('billing'::text, 'support'::text)$$, 'to the support queue, with the category as the reason');
SELECT id AS r2 FROM flow_runs WHERE session = 'call:+15550002' \gset
SELECT ok(flow_human_reply(:'r2', 'Hi, this is Dana from billing. Your refund is on its way.') > 0, 'the human replies');
SELECT is((flow_resume(:'r2', 'close')).status, 'completed', 'and closes the call');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r2'), 'closed', 'in closed');

-- 3. three unclear answers, then the transfer
CALL pg_temp.turn('support_call', 'call:+15550003', 'hi') \gset
CALL pg_temp.turn('support_call', 'call:+15550003', 'um') \gset
CALL pg_temp.turn('support_call', 'call:+15550003', 'what?') \gset
CALL pg_temp.turn('support_call', 'call:+15550003', 'I do not know') \gset
SELECT is(:'reply'::text, 'Let me transfer you to a colleague who can help.', 'the exhausted question transfers');
SELECT is((SELECT handoff->>'reason' FROM flow_runs WHERE session = 'call:+15550003'), 'issue not understood', 'with the reason');

-- 4. the status tool fails: transfer
UPDATE flow_tools SET config = config || jsonb_build_object('url', current_setting('fe_test.http') || '/status/500', 'retry', '{"max_attempts": 1}'::jsonb)
 WHERE name = 'system_status';
CALL pg_temp.turn('support_call', 'call:+15550004', 'hi') \gset
CALL pg_temp.turn('support_call', 'call:+15550004', 'technical') \gset
SELECT is(:'reply'::text, 'I understand you''re having a technical issue. Let me check our system status... | Let me transfer you to a colleague who can help.',
  'a failed status check transfers');
SELECT is((SELECT s.status FROM flow_run_steps s JOIN flow_runs r ON r.id = s.run_id WHERE r.session = 'call:+15550004' AND s.executor = 'tool'),
  'failed', 'the failed tool step is kept');
UPDATE flow_tools SET config = config - 'retry' || jsonb_build_object('url', :'status_url') WHERE name = 'system_status';

SELECT * FROM finish();
