#!/usr/bin/env python3
"""A test stand-in for an OpenTelemetry Collector's OTLP/HTTP receiver.

No collector binary can be installed on our machines (only package
registries are reachable), so the end-to-end tests use this protocol-level
fake. It is strict where a collector is: every `POST /v1/traces` body must be
`application/json` and parse, with no unknown fields, as the official
`ExportTraceServiceRequest` (opentelemetry-proto from PyPI), after OTLP's
JSON rule that trace and span ids are hex. A body that does not parse is
answered 400 and recorded as an error.

    receiver.py PORT
    GET /spans   -> every span received, flattened (JSON list)
    GET /errors  -> every rejected request's reason (JSON list)
"""
import base64, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

LOCK = threading.Lock()
SPANS, ERRORS = [], []
ID_LENGTHS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def hex_ids_to_base64(doc):
    """OTLP/JSON ids are hex; the generic protobuf mapping wants base64."""
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key, length in ID_LENGTHS.items():
                    if key in span:
                        v = span[key]
                        if len(v) != length or v != v.lower():
                            raise ValueError(f"{key} {v!r} is not {length} lower-case hex digits")
                        span[key] = base64.b64encode(bytes.fromhex(v)).decode()
    return doc


def attr_value(v):
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def flatten(doc):
    out = []
    for rs in doc.get("resourceSpans", []):
        resource = {a["key"]: attr_value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                out.append({
                    "service": resource.get("service.name"),
                    "traceId": span["traceId"],
                    "spanId": span["spanId"],
                    "parentSpanId": span.get("parentSpanId"),
                    "name": span["name"],
                    "kind": span.get("kind"),
                    "start": int(span["startTimeUnixNano"]),
                    "end": int(span["endTimeUnixNano"]),
                    "attributes": {a["key"]: attr_value(a["value"]) for a in span.get("attributes", [])},
                    "status": span.get("status", {}),
                })
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            if self.path == "/spans":
                return self.reply(200, SPANS)
            if self.path == "/errors":
                return self.reply(200, ERRORS)
        self.reply(404, {"error": "not_found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            if self.path != "/v1/traces":
                raise ValueError(f"POST to {self.path}, not /v1/traces")
            ctype = self.headers.get("Content-Type", "")
            if ctype.split(";")[0].strip() != "application/json":
                raise ValueError(f"Content-Type {ctype!r}, not application/json")
            doc = json.loads(body)
            json_format.Parse(json.dumps(hex_ids_to_base64(json.loads(body))),
                              ExportTraceServiceRequest(), ignore_unknown_fields=False)
            for span in flatten(doc):
                if span["end"] < span["start"]:
                    raise ValueError(f"span {span['name']} ends before it starts")
            spans = flatten(doc)
        except Exception as e:  # reject, and remember why
            with LOCK:
                ERRORS.append(str(e))
            return self.reply(400, {"error": str(e)})
        with LOCK:
            SPANS.extend(spans)
        self.reply(200, {})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"otlp receiver on 127.0.0.1:{sys.argv[1]}", flush=True)
    server.serve_forever()
