-- Seed 001's WhatsApp food order (examples/food_order), end to end, one text
-- message per turn through flow_process: greet, search, select, address
-- (elicited, geocoded, zone-checked), delivery price, confirm, cash on
-- delivery or online payment (a payment row's trigger advances the run),
-- place the order.  Everything runs in the turn's transaction.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(44);
\i examples/food_order/tools.sql
\set food_flow `cat examples/food_order/flow.json`
SELECT is_empty(format('SELECT * FROM flow_validate(%L)', :'food_flow'), 'the food order flow validates cleanly');
SELECT version AS food_version FROM flow_define(:'food_flow') \gset
SELECT cmp_ok(jsonb_array_length(jsonb_path_query_array(:'food_flow'::jsonb, '$.states.keyvalue()')), '>=', 15, 'it has at least 15 states');

-- One turn: the replies it produced, joined with " | ".
CREATE FUNCTION pg_temp.food_turn(session text, input text, vars jsonb DEFAULT NULL) RETURNS text LANGUAGE sql AS $$
  SELECT array_to_string(responses, ' | ') FROM flow_process('food_order', session, input, vars)
$$;
-- Several turns; the replies of the last one.
CREATE FUNCTION pg_temp.say(session text, VARIADIC inputs text[]) RETURNS text LANGUAGE plpgsql AS $$
DECLARE i text; reply text;
BEGIN
  FOREACH i IN ARRAY inputs LOOP reply := pg_temp.food_turn(session, i); END LOOP;
  RETURN reply;
END $$;
CREATE FUNCTION pg_temp.state_of(session text) RETURNS text LANGUAGE sql AS $$
  SELECT state || '/' || status FROM flow_runs WHERE flow_runs.session = state_of.session ORDER BY created_at DESC LIMIT 1
$$;

-- 1. online payment, with every detour of the conversation
SELECT is(pg_temp.food_turn('+919800000001', 'I want to order food', '{"customer_name": "Asha"}'),
  'Hi Asha! What would you like to order today?', 'the first turn starts the run with the variables and greets');
SELECT is((SELECT key FROM flow_runs WHERE session = '+919800000001'), '+919800000001', 'the run''s key is the session');
SELECT is(pg_temp.food_turn('+919800000001', 'pizza'), 'Sorry, nothing matches "pizza". Try another dish?', 'a search with no results');
SELECT is(pg_temp.food_turn('+919800000001', 'dosa'),
  'Found 2: 1. masala dosa (₹120), 2. plain dosa (₹90). Reply with the numbers you want, or search again.', 'a search lists numbered dishes');
SELECT is(pg_temp.food_turn('+919800000001', '7'),
  'Found 2: 1. masala dosa (₹120), 2. plain dosa (₹90). Reply with the numbers you want, or search again.', 'a number not on the list shows it again');
SELECT is(pg_temp.food_turn('+919800000001', 'idli please'),
  'Found 1: 1. idli (₹60). Reply with the numbers you want, or search again.', 'words without numbers search again');
SELECT is(pg_temp.food_turn('+919800000001', 'dosa'),
  'Found 2: 1. masala dosa (₹120), 2. plain dosa (₹90). Reply with the numbers you want, or search again.', 'back to dosas');
SELECT is(pg_temp.food_turn('+919800000001', '1 and 2'), 'Where should we deliver masala dosa and plain dosa?', 'two picks, then the address question');
SELECT is(pg_temp.food_turn('+919800000001', 'abc'), 'Please send a street and area, for example "12 FC Road".', 'a too-short address is asked again');
SELECT is(pg_temp.food_turn('+919800000001', '5 Hinjewadi Phase 1'),
  'Sorry, we do not deliver to 5 Hinjewadi Phase 1 yet (14 km away). | Where should we deliver masala dosa and plain dosa?',
  'an address outside the zone is refused and asked again, in one turn');
SELECT is(pg_temp.food_turn('+919800000001', 'x'), 'Please send a street and area, for example "12 FC Road".', 're-asked after the zone error');
SELECT is(pg_temp.food_turn('+919800000001', 'y'), 'Please send a street and area, for example "12 FC Road".',
  'the attempts restart when the question is asked again (a third invalid answer overall is not the end)');
SELECT is(pg_temp.food_turn('+919800000001', '12 FC Road'),
  'masala dosa, plain dosa: ₹210 + delivery ₹15 = ₹225. Pay cash on delivery or online? (cash / online / cancel)',
  'geocoded, zone-checked, priced: delivery is distance × 10');
SELECT results_eq($$SELECT (context->>'distance')::numeric, (context->>'delivery_fee')::numeric, (context->>'total_amount')::numeric,
                           context->>'address_text' FROM flow_runs WHERE session = '+919800000001'$$,
  $$VALUES (1.5, 15::numeric, 225::numeric, '12 FC Road'::text)$$, 'the context holds distance, fee, total and the address');
SELECT is(pg_temp.food_turn('+919800000001', 'hmm'),
  'masala dosa, plain dosa: ₹210 + delivery ₹15 = ₹225. Pay cash on delivery or online? (cash / online / cancel)',
  'an answer that names no payment method asks again');
SELECT pg_temp.food_turn('+919800000001', 'online please') AS reply \gset
SELECT is(:'reply'::text,
  (SELECT format('Please pay ₹225 at https://pay.example/food/%s. I will confirm as soon as it arrives.', max(payment_id)) FROM food_payments),
  'online payment creates a payment link for the session''s phone');
SELECT results_eq($$SELECT phone, amount, status FROM food_payments ORDER BY payment_id DESC LIMIT 1$$,
  $$VALUES ('+919800000001'::text, 225::numeric, 'created'::text)$$, 'the payment row was written by the sql step');
SELECT is(pg_temp.state_of('+919800000001'), 'await_payment/waiting', 'the run waits for the payment');
SELECT is(pg_temp.food_turn('+919800000001', 'did it work?'),
  (SELECT format('Please pay ₹225 at https://pay.example/food/%s. I will confirm as soon as it arrives.', max(payment_id)) FROM food_payments),
  'a message while waiting for the payment repeats the link');
UPDATE food_payments SET status = 'captured' WHERE phone = '+919800000001';
SELECT is(pg_temp.state_of('+919800000001'), 'completed/completed', 'the captured payment row''s trigger advanced the run to completion');
SELECT is((SELECT response FROM flow_runs WHERE session = '+919800000001'),
  (SELECT format('Thank you! Order %s is placed and on its way to 12 FC Road.', max(order_id)) FROM food_orders), 'with the new order id');
SELECT results_eq($$SELECT payment, total, items, address FROM food_orders ORDER BY order_id DESC LIMIT 1$$,
  $$VALUES ('online'::text, 225::numeric, '["masala dosa", "plain dosa"]'::jsonb, '12 FC Road'::text)$$,
  'the order row was written by the sql step, in the payment''s transaction');
SELECT is((SELECT count(*)::int FROM flow_messages m JOIN flow_runs r ON r.id = m.run_id WHERE r.session = '+919800000001'), 32,
  'the whole conversation is stored: 15 user turns and 17 replies');
SELECT is((SELECT array_agg(e.to_state ORDER BY e.seq) FROM flow_events e JOIN flow_runs r ON r.id = e.run_id
            WHERE r.session = '+919800000001' AND e.seq >= (SELECT min(seq) FROM flow_events e2 WHERE e2.run_id = r.id AND e2.to_state = 'confirm_order')),
  ARRAY['confirm_order', 'process_payment', 'confirm_order', 'process_payment', 'payment_link', 'await_payment', 'await_payment',
        'place_order', 'completed'], 'the path from the confirmation on');
SELECT is((SELECT source FROM flow_events e JOIN flow_runs r ON r.id = e.run_id
            WHERE r.session = '+919800000001' AND e.to_state = 'place_order'), 'external',
  'the payment came in as an external event');

-- 2. cash on delivery, the short way
SELECT is(pg_temp.food_turn('+919800000002', 'hi', '{"customer_name": "Ravi"}'), 'Hi Ravi! What would you like to order today?', 'greets Ravi');
SELECT is(pg_temp.food_turn('+919800000002', 'paneer'), 'Found 1: 1. paneer tikka (₹220). Reply with the numbers you want, or search again.', 'search');
SELECT is(pg_temp.food_turn('+919800000002', '1'), 'Where should we deliver paneer tikka?', 'select');
SELECT is(pg_temp.food_turn('+919800000002', 'Camp, near the church'),
  'paneer tikka: ₹220 + delivery ₹0 = ₹220. Pay cash on delivery or online? (cash / online / cancel)', 'a zero-distance address');
SELECT is(pg_temp.food_turn('+919800000002', 'Cash'), (SELECT format('Thank you! Order %s is placed and on its way to Camp, near the church.', max(order_id) + 1) FROM food_orders),
  'cash on delivery places the order in the same turn');
SELECT results_eq($$SELECT status, completed FROM flow_turn_of((SELECT id FROM flow_runs WHERE session = '+919800000002'), 0)$$,
  $$VALUES ('completed'::text, true)$$, 'the turn reports a completed run');
SELECT is((SELECT payment FROM food_orders ORDER BY order_id DESC LIMIT 1), 'cod', 'the order is cash on delivery');

-- 3. cancelling at the confirmation
SELECT is(pg_temp.say('+919800000003', 'hi', 'idli'), 'Found 1: 1. idli (₹60). Reply with the numbers you want, or search again.',
  'without a name: greeted, then search');
SELECT is(pg_temp.say('+919800000003', '1', 'Koregaon Park', 'no, cancel it'), 'Order cancelled. Message us any time to start again.', 'cancel ends the conversation');
SELECT is(pg_temp.state_of('+919800000003'), 'cancelled/completed', 'in the cancelled state');

-- 4. three unusable addresses end the conversation
SELECT is(pg_temp.say('+919800000004', 'hi', 'idli', '1', 'a', 'b', 'c'), 'Order cancelled. Message us any time to start again.', 'the third invalid address exhausts the question');

-- 5. a failed payment, and a dish taken off the menu mid-conversation
SELECT is(pg_temp.say('+919800000005', 'hi', 'idli', '1', 'FC Road', 'upi'),
  'Please pay ₹75 at https://pay.example/food/' || (SELECT max(payment_id) + 1 FROM food_payments) || '. I will confirm as soon as it arrives.',
  'paying by UPI is an online payment');
SELECT is(pg_temp.state_of('+919800000005'), 'await_payment/waiting', 'waiting for the payment');
UPDATE food_payments SET status = 'failed' WHERE phone = '+919800000005';
SELECT is((SELECT response FROM flow_runs WHERE session = '+919800000005'), 'Sorry, we could not place your order: failed',
  'a failed payment row ends the order');
SELECT is(pg_temp.say('+919800000006', 'hi', 'paneer', '1', 'FC Road'),
  'paneer tikka: ₹220 + delivery ₹15 = ₹235. Pay cash on delivery or online? (cash / online / cancel)', 'paneer tikka, priced');
DELETE FROM food_menu WHERE name = 'paneer tikka';
SELECT ok(pg_temp.food_turn('+919800000006', 'cash') LIKE 'Sorry, we could not place your order: sql step food_place_order(jsonb) failed%paneer tikka is no longer on the menu',
  'a failing order placement routes to order_failed, and the reply carries the error');
SELECT is((SELECT count(*)::int FROM food_orders WHERE items ? 'paneer tikka' AND payment = 'cod' AND address = 'FC Road'), 0,
  'and no order row was left behind');

SELECT * FROM finish();
ROLLBACK;
