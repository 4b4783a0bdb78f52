-- Triggers on application tables: an order row starts a run in the
-- transaction of the insert; a payment row captured advances it, even
-- while it is busy; an sql step confirms the order row.  flow_signal and
-- the dead letters of events no run took.  This file commits.
\i test/lib/prelude.sql
SELECT plan(25);

-- a clean slate if an earlier run of this file was interrupted
DROP TABLE IF EXISTS t_trg_orders, t_trg_payments;
DROP FUNCTION IF EXISTS t_trg_confirm(jsonb);
SELECT pg_temp.forget_runs('t_trg_order') \g /dev/null
DELETE FROM flow_dead_letters WHERE key IN ('4', '99');

CREATE TABLE t_trg_orders (id int PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL,
                           status text NOT NULL DEFAULT 'new');
CREATE TABLE t_trg_payments (id serial PRIMARY KEY, order_id int NOT NULL, amount numeric, status text NOT NULL DEFAULT 'pending');
CREATE FUNCTION t_trg_confirm(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
  UPDATE t_trg_orders SET status = 'confirmed' WHERE id = (args->>'order_id')::int
  RETURNING jsonb_build_object('confirmed', id, 'paid', args->'paid')
$$;
SELECT flow_define(format($$
{"id": "t_trg_order", "initialState": "check", "finalStates": ["confirmed"],
 "states": {
   "check": {"actions": [{"executor": "http", "output": "stock", "config": {"url": "%s/slow/{{ customer === 'slow' ? 800 : 1 }}"}}],
             "transitions": {"always": "await_payment"}},
   "await_payment": {"transitions": {"payment_captured": "confirm"}},
   "confirm": {"actions": [{"executor": "sql", "output": "confirmation",
                            "config": {"function": "public.t_trg_confirm(jsonb)", "args": {"order_id": "{{ id }}", "paid": "{{ event.amount }}"}}}],
               "transitions": {"always": "confirmed"}},
   "confirmed": {}
 }}$$, current_setting('fe_test.http'))::jsonb) \gset

CREATE TRIGGER t_trg_orders_start AFTER INSERT ON t_trg_orders
  FOR EACH ROW EXECUTE FUNCTION flow_trigger_start('t_trg_order', 'id');
CREATE TRIGGER t_trg_payments_captured AFTER UPDATE OF status ON t_trg_payments
  FOR EACH ROW WHEN (NEW.status = 'captured') EXECUTE FUNCTION flow_trigger_event('payment_captured', 'order_id');

-- 1. the run lives and dies with the order row
BEGIN;
INSERT INTO t_trg_orders VALUES (1, 'rolled back', 10);
SELECT is((SELECT count(*)::int FROM flow_runs WHERE flow = 't_trg_order' AND key = '1'), 1, 'inserting an order starts a run in the same transaction');
ROLLBACK;
SELECT is((SELECT count(*)::int FROM flow_runs WHERE flow = 't_trg_order' AND key = '1'), 0, 'rolling back the insert leaves no run');

-- 2. the journey: order inserted -> run waits for payment -> payment captured -> order confirmed by the flow
INSERT INTO t_trg_orders VALUES (2, 'ann', 25.5);
SELECT id AS r2 FROM flow_runs WHERE flow = 't_trg_order' AND key = '2' \gset
SELECT is((SELECT context->>'customer' FROM flow_runs WHERE id = :'r2'), 'ann', 'the run''s input is the row (to_jsonb(NEW))');
SELECT ok(pg_temp.wait_until(format($$SELECT state = 'await_payment' FROM flow_runs WHERE id = %L$$, :'r2'), 20),
          'after its stock check the run waits for the payment');
INSERT INTO t_trg_payments (order_id, amount) VALUES (2, 25.5);
SELECT is((SELECT state FROM flow_runs WHERE id = :'r2'), 'await_payment', 'a pending payment does not move it');
BEGIN;
UPDATE t_trg_payments SET status = 'captured' WHERE order_id = 2;
SELECT is((SELECT status FROM t_trg_orders WHERE id = 2), 'confirmed', 'capturing the payment confirms the order in the same transaction');
ROLLBACK;
SELECT is((SELECT status FROM t_trg_orders WHERE id = 2), 'new', 'and rolling the capture back undoes both');
SELECT is((SELECT state FROM flow_runs WHERE id = :'r2'), 'await_payment', 'the run still waits');
UPDATE t_trg_payments SET status = 'captured' WHERE order_id = 2;
SELECT is((SELECT status FROM flow_runs WHERE id = :'r2'), 'completed', 'the committed capture completes the run');
SELECT is((SELECT status FROM t_trg_orders WHERE id = 2), 'confirmed', 'the sql step confirmed the order row');
SELECT is((SELECT context->'confirmation'->>'paid' FROM flow_runs WHERE id = :'r2'), '25.5', 'the payment row was the event''s payload');

-- 3. a payment committed while the run is busy is queued, never lost
INSERT INTO t_trg_orders VALUES (3, 'slow', 40);
SELECT id AS r3 FROM flow_runs WHERE flow = 't_trg_order' AND key = '3' \gset
INSERT INTO t_trg_payments (order_id, amount) VALUES (3, 40);
UPDATE t_trg_payments SET status = 'captured' WHERE order_id = 3;
SELECT is((SELECT status FROM flow_runs WHERE id = :'r3'), 'running', 'the run was busy with its slow stock check when the payment was captured');
SELECT is((SELECT status FROM flow_events WHERE run_id = :'r3' AND event = 'payment_captured'), 'queued', 'the payment event is queued');
SELECT ok(pg_temp.wait_until(format($$SELECT status = 'completed' FROM flow_runs WHERE id = %L$$, :'r3'), 20),
          'when the check finishes, the queued payment completes the run');
SELECT is((SELECT status FROM t_trg_orders WHERE id = 3), 'confirmed', 'and the order is confirmed');

-- 4. events no run takes are kept as dead letters; the payment row is kept
INSERT INTO t_trg_payments (order_id, amount) VALUES (99, 5);
UPDATE t_trg_payments SET status = 'captured' WHERE order_id = 99;
SELECT is((SELECT status FROM t_trg_payments WHERE order_id = 99), 'captured', 'a payment for an order with no waiting run is committed');
SELECT is((SELECT reason FROM flow_dead_letters WHERE key = '99' AND event = 'payment_captured'), 'no active run has key "99"',
          'and its event is kept in flow_dead_letters with the reason');
SELECT is((SELECT payload->>'amount' FROM flow_dead_letters WHERE key = '99'), '5', 'with its payload');

-- 5. flow_signal directly
INSERT INTO t_trg_orders VALUES (4, 'bea', 12);
SELECT ok(pg_temp.wait_until($$SELECT state = 'await_payment' FROM flow_runs WHERE flow = 't_trg_order' AND key = '4'$$, 20), 'a fourth order waits');
SELECT is(flow_signal('4', 'refund'), 0, 'an event the waiting state does not take is not delivered');
SELECT ok((SELECT reason LIKE 'state "await_payment" of flow "t_trg_order" does not accept event "refund"%'
             FROM flow_dead_letters WHERE key = '4' AND event = 'refund'), 'it is a dead letter naming the state and the event');
SELECT is(flow_signal('4', 'payment_captured', '{"amount": 12}', 't_trg_order'), 1, 'flow_signal returns how many runs took the event');

-- 6. bad triggers
CREATE TRIGGER t_trg_bad_column AFTER INSERT ON t_trg_payments
  FOR EACH ROW EXECUTE FUNCTION flow_trigger_start('t_trg_order', 'no_such_column');
SELECT throws_ok($$INSERT INTO t_trg_payments (order_id) VALUES (7)$$, '42703',
  'column "no_such_column" does not exist in table public.t_trg_payments',
  'a trigger naming a column the table lacks fails the row change with a clear error');
SELECT is((SELECT count(*)::int FROM t_trg_payments WHERE order_id = 7), 0, 'and nothing of the statement is kept');
DROP TRIGGER t_trg_bad_column ON t_trg_payments;
CREATE TRIGGER t_trg_bad_level AFTER INSERT ON t_trg_payments
  FOR EACH STATEMENT EXECUTE FUNCTION flow_trigger_event('payment_captured', 'order_id');
SELECT throws_ok($$INSERT INTO t_trg_payments (order_id) VALUES (8)$$, '22023',
  'flow_trigger_event() must be a row trigger with 2 or 3 arguments', 'a statement-level trigger is refused');
DROP TRIGGER t_trg_bad_level ON t_trg_payments;

DROP TABLE t_trg_orders, t_trg_payments;
DROP FUNCTION t_trg_confirm(jsonb);
SELECT * FROM finish();
