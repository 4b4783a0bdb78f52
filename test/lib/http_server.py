#!/usr/bin/env python3
"""Loopback HTTP server for flow_engine's tests (Python standard library only).

Usage: http_server.py PORT LOGFILE

Every request is appended to LOGFILE as one JSON line:
{"method", "path", "headers" (lower-case names), "body", "at" (epoch seconds)}.

Endpoints
  /echo                   200, JSON echo of method, path, query, headers, body
  /status/<code>          that status, JSON body {"status": code}
  /slow/<ms>              waits <ms> ms, then 200 {"slept": ms}
  /flaky/<n>              500 for the first <n> requests with one Idempotency-Key, then 200
  /text                   200 text/plain that is not JSON
  /badjson                200 application/json whose body is not JSON
  /huge/<bytes>           200 with a body of <bytes> bytes
  /hang                   never answers within any test timeout (60 s)
  /nlu                    classifier: {"intent", "confidence", "entities"}
                          (pizza: order_food; parcel/courier/package: book_parcel;
                          agent/human: talk_to_agent; else unknown at 0.3)
  /route/v1/driving/<lng>,<lat>;<lng>,<lat>
                          OSRM-shaped route: {"code": "Ok", "routes": [{"distance" (m),
                          "duration" (s)}]}: great-circle distance x 1.3 at 20 km/h
  /llm/<mode>/chat/completions   OpenAI-compatible chat; <mode>:
        ok        answers (JSON content when response_format asks for it)
        500       HTTP 500
        badbody   200 with a body that is not JSON
        badschema JSON content missing a required property
        slow      like ok after 2 s
        article   an article pipeline's model: without response_format it
                  extracts the first sentences of the text after the
                  prompt's first blank line; with one, it answers {"title",
                  "summary", "key_points"} from them (key_points is a string,
                  breaking the schema, when the text says BREAK-SCHEMA).
                  Usage counts words: prompt_tokens in the messages,
                  completion_tokens in the answer.
"""
import json
import math
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

LOG_LOCK = Lock()
FLAKY = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out as two writes; without this, Nagle's algorithm
    # holds the body back until the client ACKs the headers
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _log(self, body):
        rec = {"method": self.command, "path": self.path, "at": time.time(),
               "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        with LOG_LOCK, open(LOGFILE, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _send(self, code, payload, ctype="application/json"):
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Test-Server", "flow_engine")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        body = self._body()
        self._log(body)
        path, _, query = self.path.partition("?")
        parts = [p for p in path.split("/") if p]
        head = parts[0] if parts else ""
        if head == "echo":
            return self._send(200, {"method": self.command, "path": path, "query": query,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body})
        if head == "status":
            code = int(parts[1])
            return self._send(code, {"status": code})
        if head == "slow":
            ms = int(parts[1])
            time.sleep(ms / 1000.0)
            return self._send(200, {"slept": ms})
        if head == "flaky":
            key = self.headers.get("Idempotency-Key", "")
            with LOG_LOCK:
                FLAKY[key] = FLAKY.get(key, 0) + 1
                seen = FLAKY[key]
            if seen <= int(parts[1]):
                return self._send(500, {"error": "flaky", "attempt": seen})
            return self._send(200, {"attempt": seen})
        if head == "text":
            return self._send(200, "hello, this is not JSON", "text/plain")
        if head == "badjson":
            return self._send(200, "{not json", "application/json")
        if head == "huge":
            return self._send(200, b"x" * int(parts[1]), "text/plain")
        if head == "hang":
            time.sleep(60)
            return self._send(200, {})
        if head == "nlu":
            text = (body or {}).get("text", "") if isinstance(body, dict) else ""
            low = text.lower()
            if "pizza" in low:
                return self._send(200, {"intent": "order_food", "confidence": 0.92,
                                        "entities": {"dish": "pizza"}})
            if any(w in low for w in ("parcel", "courier", "package")):
                entities = {"category": "documents"} if "document" in low else {}
                return self._send(200, {"intent": "book_parcel", "confidence": 0.95,
                                        "entities": entities})
            if "agent" in low or "human" in low:
                return self._send(200, {"intent": "talk_to_agent", "confidence": 0.9,
                                        "entities": {}})
            return self._send(200, {"intent": "unknown", "confidence": 0.3, "entities": {}})
        if head == "route" and len(parts) == 4:
            return self._route(parts[3])
        if head == "llm":
            return self._llm(parts[1] if len(parts) > 1 else "ok", body)
        return self._send(404, {"error": "no such endpoint", "path": path})

    def _route(self, coords):
        try:
            (lng1, lat1), (lng2, lat2) = [map(float, c.split(",")) for c in coords.split(";")]
        except ValueError:
            return self._send(400, {"code": "InvalidQuery", "message": "Query string malformed"})
        p1, p2 = math.radians(lat1), math.radians(lat2)
        a = (math.sin((p2 - p1) / 2) ** 2
             + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lng2 - lng1) / 2) ** 2)
        metres = round(2 * 6371000 * math.asin(math.sqrt(a)) * 1.3)
        return self._send(200, {"code": "Ok", "routes": [{"distance": metres,
                                                          "duration": round(metres / (20000 / 3600))}]})

    @staticmethod
    def _sentences(text):
        return [x.strip() + "." for x in re.split(r"[.!?]\s+", text.strip().rstrip(".")) if x.strip()]

    def _article(self, body):
        messages = body.get("messages") or []
        prompt = messages[-1].get("content", "") if messages else ""
        text = " ".join(prompt.split("\n\n", 1)[-1].split())
        sentences = self._sentences(text)
        if body.get("response_format"):
            words = sentences[0].rstrip(".").split() if sentences else []
            points = sentences[:3]
            content = json.dumps({"title": " ".join(words[:6]).title(),
                                  "summary": " ".join(sentences[:2]),
                                  "key_points": "; ".join(points) if "BREAK-SCHEMA" in text else points})
        else:
            content = " ".join(sentences[:4])
        words_in = sum(len(str(m.get("content", "")).split()) for m in messages)
        return self._send(200, {
            "id": "chatcmpl-article", "object": "chat.completion", "model": body.get("model", "test"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": words_in, "completion_tokens": len(content.split()),
                      "total_tokens": words_in + len(content.split())}})

    def _llm(self, mode, body):
        if mode == "500":
            return self._send(500, {"error": {"message": "provider down"}})
        if mode == "badbody":
            return self._send(200, "<html>gateway</html>", "text/html")
        if mode == "slow":
            time.sleep(2)
        body = body if isinstance(body, dict) else {}
        if mode == "article":
            return self._article(body)
        messages = body.get("messages") or []
        last = messages[-1].get("content", "") if messages else ""
        system = " ".join(m.get("content", "") for m in messages if m.get("role") == "system")
        if "Classify" in system:
            content = json.dumps({"intent": "order_food" if "pizza" in last or "hungry" in last else "smalltalk",
                                  "entities": {}, "confidence": 0.88})
        elif body.get("response_format"):
            content = json.dumps({"name": "pizza"} if mode == "badschema"
                                 else {"name": "pizza", "qty": 2})
        else:
            content = "echo: " + str(last)
        return self._send(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model", "test"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def do_HEAD(self):
        self._log(None)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


if __name__ == "__main__":
    port, LOGFILE = int(sys.argv[1]), sys.argv[2]
    open(LOGFILE, "w").close()
    Server(("127.0.0.1", port), Handler).serve_forever()
