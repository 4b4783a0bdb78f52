-- Seed 000's parcel booking (examples/parcel_delivery), end to end, turn by
-- turn: NLU (an http classifier the worker calls), pickup and drop addresses
-- (elicited, geocoded in SQL), road distance (an http tool the worker calls,
-- OSRM-shaped), price by category, a booking whose payment row's trigger
-- advances the run, rider dispatch, and the human handoff when the bot
-- cannot help.  Turns that need the worker are waited for with flow_wait.
\i test/lib/prelude.sql
SELECT plan(41);

-- a clean slate
SELECT pg_temp.forget_runs('parcel_delivery') \g /dev/null
DROP TABLE IF EXISTS parcel_bookings, parcel_riders, parcel_rates, parcel_places CASCADE;
DROP SEQUENCE IF EXISTS parcel_booking_seq;
-- no LLM provider: a low-confidence classification is kept (below_threshold)
-- rather than handed to an LLM, whatever earlier test files configured
DELETE FROM flow_providers;
SELECT current_setting('fe_test.http') AS parcel_svc \gset
\i examples/parcel_delivery/tools.sql
\set parcel_flow `cat examples/parcel_delivery/flow.json`
SELECT is_empty(format('SELECT * FROM flow_validate(%L)', :'parcel_flow'), 'the parcel flow validates cleanly');
SELECT flow_define(:'parcel_flow') \g /dev/null
SELECT is(flow_for_intent('intent.parcel.book'), 'parcel_delivery', 'its trigger intent routes to it');

-- 1. a booking, with every detour
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'hello') \gset
SELECT is(:'first'::text, 'running', 'the first turn waits for the NLU step, which the worker sends');
SELECT is(:'reply'::text, 'Sorry, I did not get that. I can book a parcel pickup for you, or connect you to an agent. What would you like?',
  'flow_wait returns the reply: a greeting is not understood');
SELECT id AS r1 FROM flow_runs WHERE session = '+919811100001' \gset
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'I want to send a parcel') \gset
SELECT is(:'reply'::text, 'Sure, let''s send a parcel. Where should we pick it up?', 'the classifier says book_parcel');
SELECT results_eq($$SELECT context->'nlu'->>'intent', (context->'nlu'->>'confidence')::numeric, context->'nlu'->>'source'
                      FROM flow_runs WHERE session = '+919811100001'$$,
  $$VALUES ('book_parcel'::text, 0.95, 'nlu'::text)$$, 'the classification is in the context');
SELECT is((SELECT j->'body' FROM pg_temp.http_log() j WHERE j->>'path' = '/nlu' AND j->'body'->>'text' = 'I want to send a parcel'
              AND j->'headers'->>'idempotency-key' LIKE :'r1' || '-%'),
  '{"text": "I want to send a parcel", "intents": ["book_parcel", "talk_to_agent"]}'::jsonb,
  'the classifier got the text and the intents');
SELECT is((SELECT count(*)::int FROM flow_run_steps s JOIN flow_runs r ON r.id = s.run_id
            WHERE r.session = '+919811100001' AND s.input::text LIKE '%' || :'parcel_svc' || '%' AND s.executor = 'nlu'), 0,
  'the classifier URL comes from flow_secrets and is not copied into the steps');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'B-12') \gset
SELECT is(:'reply'::text, 'Please send the full pickup address, with the area.', 'a too-short pickup address is asked again');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'flat 4, Baner Road') \gset
SELECT is(:'reply'::text, 'And where should it go?', 'then the drop address');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'FLAT 4, BANER ROAD') \gset
SELECT is(:'reply'::text, 'Please send the full drop address, with the area.', 'the drop cannot be the pickup');
CALL pg_temp.turn('parcel_delivery', '+919811100001', '12 Mars Street') \gset
SELECT is(:'reply'::text, 'Sorry, we do not serve 12 Mars Street yet. | And where should it go?', 'an address the geocoder does not know');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'Viman Nagar, lane 5') \gset
SELECT is(:'first'::text, 'running', 'the route is measured by the worker');
SELECT is(:'reply'::text,
  'Baner to Viman Nagar is 18.5 km by road. What are you sending: documents, small (up to 5 kg), medium (up to 15 kg) or large (up to 30 kg)?',
  'geocoded, routed, and the category question');
SELECT ok(EXISTS (SELECT FROM pg_temp.http_log() j
                   WHERE j->>'path' = '/route/v1/driving/73.779,18.559;73.914,18.567?overview=false'
                     AND j->'headers'->>'idempotency-key' LIKE :'r1' || '-%'),
  'the router got both coordinates, lng,lat, with the step''s idempotency key');
SELECT is((SELECT (context->>'distance_km')::numeric FROM flow_runs WHERE session = '+919811100001'), 18.5, 'distance_km from the route''s metres');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'a box') \gset
SELECT is(:'reply'::text, 'Please answer documents, small, medium or large.', 'an answer that is no category is asked again');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'Small, a phone') \gset
SELECT is(:'reply'::text, 'small, 18.5 km: ₹235 (₹50 + ₹10/km). Reply pay to book it, or cancel.', 'priced by category and distance');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'hmm') \gset
SELECT is(:'reply'::text, 'small, 18.5 km: ₹235 (₹50 + ₹10/km). Reply pay to book it, or cancel.', 'neither pay nor cancel: the quote again');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'ok, pay') \gset
SELECT is(:'reply'::text, 'Booking PB-00001 is held for you. Pay ₹235 at https://pay.example/parcel/PB-00001 to confirm it.', 'the booking is held');
SELECT results_eq($$SELECT phone, pickup, drop_address, category, distance_km, price, payment_status, status FROM parcel_bookings$$,
  $$VALUES ('+919811100001'::text, 'flat 4, Baner Road'::text, 'Viman Nagar, lane 5'::text, 'small'::text, 18.5, 235::numeric, 'pending'::text, 'held'::text)$$,
  'the booking row was written in the turn''s transaction');
CALL pg_temp.turn('parcel_delivery', '+919811100001', 'where do I pay?') \gset
SELECT is(:'reply'::text, 'Booking PB-00001 is held for you. Pay ₹235 at https://pay.example/parcel/PB-00001 to confirm it.', 'a message while the payment is pending repeats the link');
UPDATE parcel_bookings SET payment_status = 'captured' WHERE booking_id = 'PB-00001';
SELECT results_eq($$SELECT status, state, response FROM flow_runs WHERE session = '+919811100001'$$,
  $$VALUES ('completed'::text, 'confirmed'::text, 'Payment received, booking PB-00001 is confirmed. Priya will pick up your parcel from flat 4, Baner Road in about 10 minutes.'::text)$$,
  'the captured payment''s trigger confirmed the booking and dispatched the nearest rider');
SELECT results_eq($$SELECT b.status, b.rider, r.busy FROM parcel_bookings b JOIN parcel_riders r ON r.name = b.rider$$,
  $$VALUES ('confirmed'::text, 'Priya'::text, true)$$, 'the booking is confirmed and the rider is busy');
SELECT is((SELECT array_agg(DISTINCT s.executor ORDER BY s.executor) FROM flow_run_steps s JOIN flow_runs r ON r.id = s.run_id
            WHERE r.session = '+919811100001'), ARRAY['nlu', 'respond', 'set', 'tool'], 'the executors it used');
SELECT is((SELECT count(*)::int FROM flow_messages m JOIN flow_runs r ON r.id = m.run_id WHERE r.session = '+919811100001'), 26,
  'the conversation is stored: 12 user turns and 14 replies');

-- 2. the payment fails: the booking is cancelled
CALL pg_temp.turn('parcel_delivery', '+919811100002', 'courier a package please') \gset
SELECT is(:'reply'::text, 'Sure, let''s send a parcel. Where should we pick it up?', 'booking intent on the first turn');
CALL pg_temp.turn('parcel_delivery', '+919811100002', 'Kothrud depot') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100002', 'Shivajinagar court') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100002', 'documents') \gset
SELECT is(:'reply'::text, 'documents, 6.4 km: ₹91 (₹40 + ₹8/km). Reply pay to book it, or cancel.', 'documents are cheaper');
CALL pg_temp.turn('parcel_delivery', '+919811100002', 'yes') \gset
UPDATE parcel_bookings SET payment_status = 'failed' WHERE phone = '+919811100002';
SELECT results_eq($$SELECT r.state, r.response, b.status FROM flow_runs r JOIN parcel_bookings b ON b.phone = r.session WHERE r.session = '+919811100002'$$,
  $$VALUES ('payment_failed'::text, 'The payment failed, so booking PB-00002 is cancelled. Message us to try again.'::text, 'cancelled'::text)$$,
  'a failed payment cancels the booking');

-- 3. not understood twice: a human takes over, then hands back
CALL pg_temp.turn('parcel_delivery', '+919811100003', 'asdf') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100003', 'qwerty') \gset
SELECT is(:'reply'::text, 'Let me connect you to a delivery agent.', 'the second misunderstanding escalates');
SELECT results_eq($$SELECT queue, reason FROM flow_handoffs h JOIN flow_runs r ON r.id = h.id WHERE r.session = '+919811100003'$$,
  $$VALUES ('parcel'::text, 'the bot could not complete the booking'::text)$$, 'flow_handoffs lists it, in the parcel queue');
SELECT id AS r3 FROM flow_runs WHERE session = '+919811100003' \gset
SELECT ok(flow_human_reply(:'r3', 'Hi, I am Meera. I will book it with you.') > 0, 'the agent replies');
SELECT is((flow_resume(:'r3')).response, 'Sure, let''s send a parcel. Where should we pick it up?', 'flow_resume hands the booking back to the bot');
SELECT is((SELECT handoff FROM flow_runs WHERE id = :'r3'), NULL, 'and clears the handoff');
SELECT is((SELECT array_agg(role ORDER BY seq) FROM flow_messages WHERE run_id = :'r3'),
  ARRAY['user', 'assistant', 'user', 'assistant', 'human', 'assistant'], 'the human''s reply is in the conversation');

-- 4. asking for an agent escalates at once
CALL pg_temp.turn('parcel_delivery', '+919811100004', 'let me talk to a human') \gset
SELECT is(:'state'::text, 'escalate/waiting', 'talk_to_agent goes straight to a human');

-- 5. the router fails: the worker's error routes to a human, with the reason
UPDATE flow_tools SET config = config || jsonb_build_object('url', :'parcel_svc' || '/status/503', 'retry', '{"max_attempts": 1}'::jsonb)
 WHERE name = 'parcel_route';
CALL pg_temp.turn('parcel_delivery', '+919811100005', 'send a parcel') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100005', 'Hadapsar gate 2') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100005', 'Baner hills') \gset
SELECT is(:'reply'::text, 'Let me connect you to a delivery agent.', 'a failed route escalates');
SELECT ok((SELECT handoff->>'reason' FROM flow_runs WHERE session = '+919811100005') LIKE '%returned HTTP 503%',
  'the handoff reason is the tool''s error');
SELECT is((SELECT s.status FROM flow_run_steps s JOIN flow_runs r ON r.id = s.run_id WHERE r.session = '+919811100005' AND s.executor = 'tool'
            AND s.input->>'tool' = 'parcel_route'), 'failed', 'the failed step is kept');
\set parcel_route_url :parcel_svc '/route/v1/driving/{{ params.from }};{{ params.to }}?overview=false'
UPDATE flow_tools SET config = config || jsonb_build_object('url', :'parcel_route_url', 'retry', '{"max_attempts": 2, "backoff_ms": 100}'::jsonb)
 WHERE name = 'parcel_route';

-- 6. three unusable pickup addresses go to a human too
CALL pg_temp.turn('parcel_delivery', '+919811100006', 'parcel') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100006', 'x') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100006', 'y') \gset
CALL pg_temp.turn('parcel_delivery', '+919811100006', 'z') \gset
SELECT is(:'state'::text, 'escalate/waiting', 'an exhausted question escalates');
SELECT is((SELECT count(*)::int FROM flow_handoffs WHERE queue = 'parcel'), 3, 'three conversations are with humans now (the resumed one is not)');

SELECT * FROM finish();
