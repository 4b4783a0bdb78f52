-- Mock tools for the food order flow: SQL functions taking and returning jsonb.
CREATE TABLE IF NOT EXISTS food_menu (name text PRIMARY KEY, price numeric NOT NULL);
INSERT INTO food_menu VALUES ('masala dosa', 120), ('plain dosa', 90), ('idli', 60), ('paneer tikka', 220)
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS food_orders (
    order_id serial PRIMARY KEY, items jsonb NOT NULL, address jsonb NOT NULL,
    payment text NOT NULL, total numeric NOT NULL, created_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION food_search(a jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN count(*) = 0 THEN jsonb_build_object('event', 'no_items', 'items', '[]'::jsonb)
              ELSE jsonb_build_object('event', 'items_found', 'items', jsonb_agg(name ORDER BY name)) END
    FROM food_menu WHERE name ILIKE '%' || (a->>'query') || '%'
$$;

-- Serviceable within 10 km of the kitchen at (18.52, 73.85); distance by equirectangular approximation.
CREATE OR REPLACE FUNCTION food_zone(a jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  WITH d AS (SELECT round((111.32 * sqrt(power((a->>'latitude')::float8 - 18.52, 2)
                  + power(((a->>'longitude')::float8 - 73.85) * cos(radians(18.52)), 2)))::numeric, 1) AS km)
  SELECT jsonb_build_object('serviceable', km <= 10, 'distance_km', km) FROM d
$$;

CREATE OR REPLACE FUNCTION food_price(a jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('items_total', coalesce(sum(m.price), 0),
                            'total', coalesce(sum(m.price), 0) + (a->>'delivery_fee')::numeric)
    FROM jsonb_array_elements_text(a->'items') i JOIN food_menu m ON m.name = i
$$;

CREATE OR REPLACE FUNCTION food_place_order(a jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE id int;
BEGIN
  IF jsonb_array_length(a->'items') = 0 THEN
    RAISE EXCEPTION 'the order has no items' USING ERRCODE = 'check_violation';
  END IF;
  INSERT INTO food_orders (items, address, payment, total)
  VALUES (a->'items', a->'address', a->>'payment', (a->>'total')::numeric) RETURNING order_id INTO id;
  RETURN jsonb_build_object('order_id', id, 'status', 'placed');
END $$;
