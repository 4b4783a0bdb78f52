-- A 15-state flow in the shape of seed 001's food order, end to end, turn by turn,
-- with set, sql and respond in place of the app-specific executors.
\i test/lib/prelude.sql
BEGIN;
SELECT plan(26);
\i examples/food_order/tools.sql
\set food_flow `cat examples/food_order/flow.json`
SELECT is_empty(format('SELECT * FROM flow_validate(%L)', :'food_flow'), 'the food order flow validates cleanly');
SELECT version AS food_version FROM flow_define(:'food_flow') \gset
SELECT cmp_ok(jsonb_array_length(jsonb_path_query_array(:'food_flow'::jsonb, '$.states.keyvalue()')), '>=', 12, 'it has at least 12 states');

-- cash on delivery
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('food_order', '{"customer_name": "Asha"}', '+919800000001') \gset
SELECT results_eq(format('SELECT status, state, response FROM flow_run(%L)', :'r'),
  $$VALUES ('waiting'::text, 'init'::text, 'Hi Asha! What would you like to order?'::text)$$, 'greets and waits');
SELECT results_eq(format($$SELECT state, response FROM flow_send(%L, 'user_message', '{"text": "pizza"}')$$, :'r'),
  $$VALUES ('no_results'::text, 'Sorry, nothing matches "pizza". Try another dish?'::text)$$, 'a search with no results');
SELECT results_eq(format($$SELECT state, response FROM flow_send(%L, 'user_message', '{"text": "dosa"}')$$, :'r'),
  $$VALUES ('show_results'::text, 'Found 2: masala dosa, plain dosa'::text)$$, 'a search with results');
SELECT results_eq(format($$SELECT state, response FROM flow_send(%L, 'user_selects', '{"items": ["masala dosa", "idli"]}')$$, :'r'),
  $$VALUES ('collect_address'::text, 'Where should we deliver?'::text)$$, 'selection, then the address question');
SELECT results_eq(format($$SELECT state, response FROM flow_send(%L, 'address_given',
                            '{"address": {"line": "FC Road", "latitude": 18.53, "longitude": 73.84}}')$$, :'r'),
  $$VALUES ('confirm_order'::text, '2 items, delivery 15, total ₹195. Confirm?'::text)$$, 'zone, distance and pricing, then confirmation');
SELECT results_eq(format($$SELECT (context->>'distance')::numeric, (context->>'delivery_fee')::numeric, (context->>'total_amount')::numeric FROM flow_runs WHERE id = %L$$, :'r'),
  $$VALUES (1.5, 15::numeric, 195::numeric)$$, 'delivery fee is distance * 10');
SELECT results_eq(format($$SELECT status, state FROM flow_send(%L, 'user_confirms', '{"method": "cod"}')$$, :'r'),
  $$VALUES ('completed'::text, 'completed'::text)$$, 'cash on delivery places the order and completes');
SELECT is((SELECT response FROM flow_runs WHERE id = :'r'),
  (SELECT format('Thank you! Your order %s is on its way.', max(order_id)) FROM food_orders), 'with the new order id');
SELECT results_eq($$SELECT payment, total, items FROM food_orders ORDER BY order_id DESC LIMIT 1$$,
  $$VALUES ('cod'::text, 195::numeric, '["masala dosa", "idli"]'::jsonb)$$, 'the order row was written by the sql step, in the same transaction');
SELECT is((SELECT count(*)::int FROM flow_messages WHERE run_id = :'r'), 6, 'the whole conversation is stored');
SELECT is((SELECT array_agg(to_state ORDER BY seq) FROM flow_events WHERE run_id = :'r'),
  ARRAY['init', 'search_food', 'no_results', 'search_food', 'show_results', 'collect_address', 'validate_zone',
        'calculate_delivery', 'confirm_order', 'process_payment', 'place_order', 'completed'], 'the path through the states');

-- online payment
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('food_order', '{"customer_name": "Ravi"}') \gset
SELECT is((flow_send(:'r', 'user_message', '{"text": "paneer"}')).state, 'show_results', 'search');
SELECT is((flow_send(:'r', 'user_selects', '{"items": ["paneer tikka"]}')).state, 'collect_address', 'select');
SELECT is((flow_send(:'r', 'address_given', '{"address": {"line": "Camp", "latitude": 18.52, "longitude": 73.85}}')).response,
  '1 items, delivery 0, total ₹220. Confirm?', 'a zero-distance address');
SELECT results_eq(format($$SELECT state, response FROM flow_send(%L, 'user_confirms', '{"method": "online"}')$$, :'r'),
  $$VALUES ('payment_gateway'::text, 'Pay ₹220 at https://pay.example/220'::text)$$, 'online payment asks to pay');
SELECT is((flow_send(:'r', 'payment_captured', '{"amount": 220}')).status, 'completed', 'a captured payment completes the order');

-- outside the delivery zone
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('food_order', '{"customer_name": "Mia"}') \gset
SELECT is((flow_send(:'r', 'user_message', '{"text": "idli"}')).state, 'show_results', 'search');
SELECT is((flow_send(:'r', 'user_selects', '{"items": ["idli"]}')).state, 'collect_address', 'select');
SELECT results_eq(format($$SELECT status, state, response FROM flow_send(%L, 'address_given',
                            '{"address": {"line": "Mumbai", "latitude": 19.07, "longitude": 72.87}}')$$, :'r'),
  $$VALUES ('completed'::text, 'zone_error'::text, 'Sorry, we do not deliver to Mumbai yet.'::text)$$, 'an address outside the zone ends the run');

-- a failing order placement routes to order_failed
SELECT set_config('fe.run', id::text, false) AS r FROM flow_execute('food_order', '{"customer_name": "Zoe"}') \gset
SELECT is((SELECT (flow_send(:'r', 'user_message', '{"text": "idli"}')).state), 'show_results', 'search');
SELECT is((SELECT (flow_send(:'r', 'user_selects', '{"items": []}')).state), 'collect_address', 'an empty selection');
SELECT is((SELECT (flow_send(:'r', 'address_given', '{"address": {"line": "Camp", "latitude": 18.52, "longitude": 73.85}}')).state), 'confirm_order', 'confirm');
SELECT is((SELECT state FROM flow_send(:'r', 'user_confirms', '{"method": "cod"}')), 'order_failed', 'a failed order placement routes to order_failed');
SELECT ok((SELECT response FROM flow_runs WHERE id = :'r') LIKE 'Sorry, we could not place your order: sql step food_place_order(jsonb) failed%the order has no items',
  'the reply carries the error');

SELECT * FROM finish();
ROLLBACK;
