#!/usr/bin/env python3
"""The benchmark's stand-in for an OTLP/HTTP collector (section `tracing`):
answers every `POST /v1/traces` 200 with an empty protobuf body (a valid
empty ExportTraceServiceResponse) after reading the request body, decoding
nothing, so it costs next to nothing. One thread per connection, HTTP/1.1
keep-alive. `GET /stats` -> {"posts": n, "bytes": n} so far.

    otlp_sink.py PORT

Python standard library only (tests/otlp-receiver/receiver.py checks every
body against the protobuf schema; that is for correctness, not for load).
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"posts": 0, "bytes": 0, "other": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status, body=b"", ctype="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        with LOCK:
            if self.path == "/v1/traces":
                STATS["posts"] += 1
                STATS["bytes"] += len(data)
            else:
                STATS["other"] += 1
        self._reply(200 if self.path == "/v1/traces" else 404)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            self._reply(200, body, "application/json")
        else:
            self._reply(404)

    def log_message(self, *args):  # no line per request
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
