-- Mock tools of the food-order example (seed 001): SQL functions taking and
-- returning jsonb, a menu, a tiny geocoder, and the order and payment tables
-- of the shop.  A captured payment row sends payment_captured to the run of
-- the customer's conversation (its key is the session, the phone number).
CREATE TABLE IF NOT EXISTS food_menu (name text PRIMARY KEY, price numeric NOT NULL);
INSERT INTO food_menu VALUES ('masala dosa', 120), ('plain dosa', 90), ('idli', 60), ('paneer tikka', 220)
ON CONFLICT DO NOTHING;
-- Known localities and their coordinates: the geocoder of the example.
CREATE TABLE IF NOT EXISTS food_localities (name text PRIMARY KEY, latitude float8 NOT NULL, longitude float8 NOT NULL);
INSERT INTO food_localities VALUES ('FC Road', 18.53, 73.84), ('Camp', 18.52, 73.85),
    ('Koregaon Park', 18.54, 73.89), ('Hinjewadi', 18.59, 73.74), ('Mumbai', 19.07, 72.87)
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS food_orders (
    order_id serial PRIMARY KEY, items jsonb NOT NULL, address text NOT NULL,
    payment text NOT NULL, total numeric NOT NULL, created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS food_payments (
    payment_id serial PRIMARY KEY, phone text NOT NULL, amount numeric NOT NULL,
    status text NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'captured', 'failed')));

-- Dishes matching any word of the query (of three letters or more), and a numbered listing to show the customer.
CREATE OR REPLACE FUNCTION food_search(a jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN count(*) = 0 THEN jsonb_build_object('event', 'no_items', 'items', '[]'::jsonb)
              ELSE jsonb_build_object('event', 'items_found',
                                      'items', jsonb_agg(jsonb_build_object('name', name, 'price', price) ORDER BY name),
                                      'listing', string_agg(format('%s. %s (₹%s)', n, name, price), ', ' ORDER BY name)) END
    FROM (SELECT name, price, row_number() OVER (ORDER BY name) AS n
            FROM food_menu
           WHERE EXISTS (SELECT FROM regexp_split_to_table(a->>'query', '\s+') w
                          WHERE length(w) >= 3 AND name ILIKE '%' || w || '%')) m
$$;

-- The customer's reply to the listing: numbers pick dishes ("1 and 3"),
-- numbers that are not on the list ask again, anything else is a new search.
CREATE OR REPLACE FUNCTION food_select(a jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  WITH picks AS (SELECT DISTINCT m[1]::int AS n FROM regexp_matches(a->>'text', '\d+', 'g') m),
       chosen AS (SELECT jsonb_agg(a->'items'->(n - 1)->'name' ORDER BY n) AS items
                    FROM picks WHERE n BETWEEN 1 AND jsonb_array_length(a->'items'))
  SELECT jsonb_build_object('event', CASE WHEN chosen.items IS NOT NULL THEN 'selected'
                                          WHEN EXISTS (SELECT FROM picks) THEN 'bad_pick'
                                          ELSE 'search' END,
                            'items', coalesce(chosen.items, '[]'::jsonb))
    FROM chosen
$$;

-- The locality named in the address; serviceable within 10 km of the kitchen
-- at (18.52, 73.85), distance by equirectangular approximation.
CREATE OR REPLACE FUNCTION food_zone(a jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    (SELECT jsonb_build_object('known', true, 'locality', name, 'serviceable', km <= 10, 'distance_km', km)
       FROM (SELECT name, round((111.32 * sqrt(power(latitude - 18.52, 2)
                         + power((longitude - 73.85) * cos(radians(18.52)), 2)))::numeric, 1) AS km
               FROM food_localities WHERE (a->>'address') ILIKE '%' || name || '%'
              ORDER BY length(name) DESC LIMIT 1) l),
    jsonb_build_object('known', false, 'serviceable', false))
$$;

CREATE OR REPLACE FUNCTION food_price(a jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('items_total', coalesce(sum(m.price), 0),
                            'total', coalesce(sum(m.price), 0) + (a->>'delivery_fee')::numeric)
    FROM jsonb_array_elements_text(a->'items') i JOIN food_menu m ON m.name = i
$$;

CREATE OR REPLACE FUNCTION food_payment_link(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  INSERT INTO food_payments (phone, amount) VALUES (a->>'phone', (a->>'amount')::numeric)
  RETURNING jsonb_build_object('payment_id', payment_id, 'url', 'https://pay.example/food/' || payment_id)
$$;

CREATE OR REPLACE FUNCTION food_place_order(a jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  id int;
  gone text;
BEGIN
  IF jsonb_array_length(a->'items') = 0 THEN
    RAISE EXCEPTION 'the order has no items' USING ERRCODE = 'check_violation';
  END IF;
  SELECT string_agg(i, ', ') INTO gone
    FROM jsonb_array_elements_text(a->'items') i WHERE NOT EXISTS (SELECT FROM food_menu m WHERE m.name = i);
  IF gone IS NOT NULL THEN
    RAISE EXCEPTION '% is no longer on the menu', gone USING ERRCODE = 'foreign_key_violation';
  END IF;
  INSERT INTO food_orders (items, address, payment, total)
  VALUES (a->'items', a->>'address', a->>'payment', (a->>'total')::numeric) RETURNING order_id INTO id;
  RETURN jsonb_build_object('order_id', id, 'status', 'placed');
END $$;

-- The payment provider's webhook updates the row; the trigger tells the run.
DROP TRIGGER IF EXISTS food_payment_captured ON food_payments;
CREATE TRIGGER food_payment_captured AFTER UPDATE OF status ON food_payments
    FOR EACH ROW WHEN (NEW.status = 'captured' AND OLD.status <> 'captured')
    EXECUTE FUNCTION flow_trigger_event('payment_captured', 'phone', 'food_order');
DROP TRIGGER IF EXISTS food_payment_failed ON food_payments;
CREATE TRIGGER food_payment_failed AFTER UPDATE OF status ON food_payments
    FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status <> 'failed')
    EXECUTE FUNCTION flow_trigger_event('payment_failed', 'phone', 'food_order');
