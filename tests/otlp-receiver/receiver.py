#!/usr/bin/env python3
"""A test stand-in for an OpenTelemetry Collector's OTLP/HTTP receiver.

No collector binary can be installed on our machines (only package
registries are reachable), so the end-to-end tests use this protocol-level
fake. It is strict where a collector is: every `POST /v1/traces` body must be
either `application/x-protobuf` (what the bridge and worker send, through the
OpenTelemetry SDK) and decode as the official `ExportTraceServiceRequest`
(opentelemetry-proto from PyPI), or `application/json` (the Wasm filter's own
encoder) and parse as one with no unknown fields, after OTLP's JSON rule
that trace and span ids are hex. A body that does not parse, or a request
without the required header, is answered 400 / 401 and recorded as an error.

    receiver.py PORT [--tls CERT KEY] [--require-header NAME=VALUE] [--control-port P]
    GET /spans   -> every span received, flattened (JSON list; "encoding" says
                    protobuf or json)
    GET /errors  -> every rejected request's reason (JSON list)

With --tls, PORT speaks HTTPS only; --control-port serves the two GETs over
plain HTTP as well, so a test needs no TLS client to read them.
"""
import base64, json, ssl, sys, threading
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


def base64_ids_to_hex(doc):
    """MessageToDict writes ids as base64; the flattened view uses OTLP's hex."""
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ID_LENGTHS:
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return doc


def attr_value(v):
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def flatten(doc, encoding):
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
                    "encoding": encoding,
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
        if REQUIRED_HEADER:
            name, value = REQUIRED_HEADER
            if self.headers.get(name) != value:
                with LOCK:
                    ERRORS.append(f"POST without the required {name} header")
                return self.reply(401, {"error": "unauthorized"})
        try:
            if self.path != "/v1/traces":
                raise ValueError(f"POST to {self.path}, not /v1/traces")
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype == "application/x-protobuf":
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                if req.FindInitializationErrors() or not req.ListFields():
                    raise ValueError("empty or incomplete ExportTraceServiceRequest")
                doc = base64_ids_to_hex(json_format.MessageToDict(req, use_integers_for_enums=True))
                encoding = "protobuf"
            elif ctype == "application/json":
                doc = json.loads(body)
                json_format.Parse(json.dumps(hex_ids_to_base64(json.loads(body))),
                                  ExportTraceServiceRequest(), ignore_unknown_fields=False)
                encoding = "json"
            else:
                raise ValueError(f"Content-Type {ctype!r}, not application/x-protobuf or application/json")
            for span in flatten(doc, encoding):
                if span["end"] < span["start"]:
                    raise ValueError(f"span {span['name']} ends before it starts")
                for key, length in ID_LENGTHS.items():
                    v = span.get(key)
                    if v is not None and len(v) != length:
                        raise ValueError(f"{key} {v!r} is not {length} hex digits")
            spans = flatten(doc, encoding)
        except Exception as e:  # reject, and remember why (DecodeError included)
            with LOCK:
                ERRORS.append(str(e))
            return self.reply(400, {"error": str(e)})
        with LOCK:
            SPANS.extend(spans)
        self.reply(200, {})


REQUIRED_HEADER = None


def main(argv):
    global REQUIRED_HEADER
    port, tls, control = int(argv[0]), None, None
    rest = argv[1:]
    while rest:
        if rest[0] == "--tls":
            tls, rest = (rest[1], rest[2]), rest[3:]
        elif rest[0] == "--require-header":
            name, _, value = rest[1].partition("=")
            REQUIRED_HEADER, rest = (name, value), rest[2:]
        elif rest[0] == "--control-port":
            control, rest = int(rest[1]), rest[2:]
        else:
            sys.exit(f"unknown argument {rest[0]}")
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    if control:
        plain = ThreadingHTTPServer(("127.0.0.1", control), Handler)
        threading.Thread(target=plain.serve_forever, daemon=True).start()
    print(f"otlp receiver on 127.0.0.1:{port}" + (" (TLS)" if tls else ""), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
