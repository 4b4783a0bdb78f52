-- The mock tool of the support-call example: an http tool the worker calls.
-- psql variable :status_url is the status endpoint (the test server's
-- /slow/<ms> in the tests: it answers {"slept": ms} after a delay).
INSERT INTO flow_tools (name, kind, description, parameters, config)
VALUES ('system_status', 'http', 'Current status of our systems for an issue category.',
        '{"type": "object", "properties": {"issue": {"type": "string"}}, "required": ["issue"]}',
        jsonb_build_object('url', :'status_url', 'method', 'GET', 'timeout_ms', 5000))
ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config;
