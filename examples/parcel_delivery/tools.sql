-- Mock services and tools of the parcel-delivery example (seed 000).
--
-- psql variable :parcel_svc is the base URL of two HTTP services the worker
-- calls: an NLU classifier at /nlu and an OSRM-style router at
-- /route/v1/driving/<lng>,<lat>;<lng>,<lat> (test/lib/http_server.py serves
-- both in the tests).  Everything else is SQL, in the turn's transaction:
-- a geocoder over a table of known places, rates per parcel category, the
-- bookings table, and rider dispatch.  A booking row whose payment is
-- captured (or fails) sends payment_captured (payment_failed) to the run of
-- the customer's conversation: its key is the session, the phone number.
CREATE TABLE IF NOT EXISTS parcel_places (name text PRIMARY KEY, lat float8 NOT NULL, lng float8 NOT NULL);
INSERT INTO parcel_places VALUES ('Baner', 18.559, 73.779), ('Kothrud', 18.507, 73.807),
    ('Viman Nagar', 18.567, 73.914), ('Hadapsar', 18.508, 73.926), ('Shivajinagar', 18.530, 73.847)
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS parcel_rates (category text PRIMARY KEY, base numeric NOT NULL, per_km numeric NOT NULL, max_kg int NOT NULL);
INSERT INTO parcel_rates VALUES ('documents', 40, 8, 1), ('small', 50, 10, 5), ('medium', 80, 12, 15), ('large', 120, 15, 30)
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS parcel_riders (name text PRIMARY KEY, lat float8 NOT NULL, lng float8 NOT NULL, busy boolean NOT NULL DEFAULT false);
INSERT INTO parcel_riders VALUES ('Sameer', 18.52, 73.85), ('Priya', 18.56, 73.78), ('Arjun', 18.51, 73.92)
ON CONFLICT DO NOTHING;
CREATE SEQUENCE IF NOT EXISTS parcel_booking_seq;
CREATE TABLE IF NOT EXISTS parcel_bookings (
    booking_id     text PRIMARY KEY DEFAULT 'PB-' || lpad(nextval('parcel_booking_seq')::text, 5, '0'),
    phone          text NOT NULL,
    pickup         text NOT NULL,
    drop_address   text NOT NULL,
    category       text NOT NULL REFERENCES parcel_rates,
    distance_km    numeric NOT NULL,
    price          numeric NOT NULL,
    payment_status text NOT NULL DEFAULT 'pending' CHECK (payment_status IN ('pending', 'captured', 'failed')),
    status         text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'confirmed', 'cancelled')),
    rider          text REFERENCES parcel_riders,
    created_at     timestamptz NOT NULL DEFAULT now());

-- The known place an address names (the longest name it contains), or NULL.
CREATE OR REPLACE FUNCTION parcel_place(address text) RETURNS parcel_places LANGUAGE sql STABLE AS $$
  SELECT * FROM parcel_places WHERE address ILIKE '%' || name || '%' ORDER BY length(name) DESC LIMIT 1
$$;

-- Both addresses to places, or {"event": "unknown_address"} naming the first unknown one.
CREATE OR REPLACE FUNCTION parcel_geocode(a jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
  WITH q(which, address, ord) AS (VALUES ('pickup', a->>'pickup', 1), ('drop', a->>'drop', 2)),
       hit AS (SELECT q.which, q.address, q.ord,
                      CASE WHEN p.name IS NOT NULL THEN jsonb_build_object('name', p.name, 'lat', p.lat, 'lng', p.lng) END AS place
                 FROM q, parcel_place(q.address) p)
  SELECT coalesce(
    (SELECT jsonb_build_object('event', 'unknown_address', 'which', which, 'address', address)
       FROM hit WHERE place IS NULL ORDER BY ord LIMIT 1),
    (SELECT jsonb_build_object('event', 'located') || jsonb_object_agg(which, place) FROM hit))
$$;

-- Price by category (the customer's answer starts with it): base + per_km × distance, rounded to the rupee.
CREATE OR REPLACE FUNCTION parcel_price(a jsonb) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE r parcel_rates;
BEGIN
  -- the answer starts with the category: "Small, a phone" or "document"
  SELECT * INTO r FROM parcel_rates WHERE lower(a->>'category') ~ ('^' || rtrim(category, 's') || 's?\M');
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no rate for parcel category "%"', a->>'category' USING ERRCODE = 'no_data_found';
  END IF;
  RETURN jsonb_build_object('category', r.category, 'base', r.base, 'per_km', r.per_km, 'max_kg', r.max_kg,
                            'price', round(r.base + r.per_km * (a->>'distance_km')::numeric));
END $$;

-- Hold a booking; the payment link points at it.
CREATE OR REPLACE FUNCTION parcel_book(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  INSERT INTO parcel_bookings (phone, pickup, drop_address, category, distance_km, price)
  VALUES (a->>'phone', a->>'pickup', a->>'drop', a->>'category', (a->>'distance_km')::numeric, (a->>'price')::numeric)
  RETURNING jsonb_build_object('booking_id', booking_id, 'payment_url', 'https://pay.example/parcel/' || booking_id)
$$;

-- Confirm a paid booking and dispatch the nearest free rider to the pickup.
CREATE OR REPLACE FUNCTION parcel_confirm(a jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE b parcel_bookings; p parcel_places; r parcel_riders; km float8;
BEGIN
  SELECT * INTO b FROM parcel_bookings WHERE booking_id = a->>'booking_id' FOR UPDATE;
  IF NOT FOUND OR b.payment_status <> 'captured' THEN
    RAISE EXCEPTION 'booking % is not paid', a->>'booking_id' USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  p := parcel_place(b.pickup);
  SELECT * INTO r FROM parcel_riders WHERE NOT busy
   ORDER BY power(lat - p.lat, 2) + power(lng - p.lng, 2), name LIMIT 1 FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no rider is free' USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  km := 111.32 * sqrt(power(r.lat - p.lat, 2) + power((r.lng - p.lng) * cos(radians(p.lat)), 2));
  UPDATE parcel_riders SET busy = true WHERE name = r.name;
  UPDATE parcel_bookings SET status = 'confirmed', rider = r.name WHERE booking_id = b.booking_id;
  RETURN jsonb_build_object('rider', r.name, 'pickup_eta_min', 10 + round(km * 3));
END $$;

CREATE OR REPLACE FUNCTION parcel_cancel(a jsonb) RETURNS jsonb LANGUAGE sql AS $$
  UPDATE parcel_bookings SET status = 'cancelled' WHERE booking_id = a->>'booking_id'
  RETURNING jsonb_build_object('booking_id', booking_id, 'status', status)
$$;


INSERT INTO flow_tools (name, kind, description, parameters, config) VALUES
 ('parcel_geocode', 'sql', 'Pickup and drop addresses to known places.',
  '{"type": "object", "required": ["pickup", "drop"], "properties": {"pickup": {"type": "string"}, "drop": {"type": "string"}}}',
  '{"function": "parcel_geocode(jsonb)"}'),
 ('parcel_route', 'http', 'Road distance and duration between two points (OSRM).',
  '{"type": "object", "required": ["from", "to"], "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}',
  jsonb_build_object('url', :'parcel_svc' || '/route/v1/driving/{{ params.from }};{{ params.to }}?overview=false',
                     'timeout_ms', 3000, 'retry', jsonb_build_object('max_attempts', 2, 'backoff_ms', 100))),
 ('parcel_price', 'sql', 'Price of a parcel by category and distance.',
  '{"type": "object", "required": ["category", "distance_km"], "properties": {"category": {"type": "string"}, "distance_km": {"type": "number", "minimum": 0}}}',
  '{"function": "parcel_price(jsonb)"}'),
 ('parcel_book', 'sql', 'Hold a booking and make its payment link.',
  '{"type": "object", "required": ["phone", "pickup", "drop", "category", "distance_km", "price"]}',
  '{"function": "parcel_book(jsonb)"}'),
 ('parcel_confirm', 'sql', 'Confirm a paid booking and dispatch a rider.',
  '{"type": "object", "required": ["booking_id"], "properties": {"booking_id": {"type": "string"}}}',
  '{"function": "parcel_confirm(jsonb)"}'),
 ('parcel_cancel', 'sql', 'Cancel a booking.',
  '{"type": "object", "required": ["booking_id"], "properties": {"booking_id": {"type": "string"}}}',
  '{"function": "parcel_cancel(jsonb)"}')
ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, parameters = EXCLUDED.parameters, config = EXCLUDED.config;
INSERT INTO flow_secrets (name, value) VALUES ('parcel_nlu_url', :'parcel_svc' || '/nlu')
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;

-- The payment provider's webhook updates the booking; the triggers tell the run.
DROP TRIGGER IF EXISTS parcel_payment_captured ON parcel_bookings;
CREATE TRIGGER parcel_payment_captured AFTER UPDATE OF payment_status ON parcel_bookings
    FOR EACH ROW WHEN (NEW.payment_status = 'captured' AND OLD.payment_status <> 'captured')
    EXECUTE FUNCTION flow_trigger_event('payment_captured', 'phone', 'parcel_delivery');
DROP TRIGGER IF EXISTS parcel_payment_failed ON parcel_bookings;
CREATE TRIGGER parcel_payment_failed AFTER UPDATE OF payment_status ON parcel_bookings
    FOR EACH ROW WHEN (NEW.payment_status = 'failed' AND OLD.payment_status <> 'failed')
    EXECUTE FUNCTION flow_trigger_event('payment_failed', 'phone', 'parcel_delivery');
