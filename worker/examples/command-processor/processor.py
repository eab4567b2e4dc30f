#!/usr/bin/env python3
"""An OpenHQM command processor: the original's example operations, in a
long-lived child process speaking JSON lines (see README.md beside this file).

Run by the worker with
    worker:
      command: ["python3", "worker/examples/command-processor/processor.py"]

One line in per message:
    {"correlation_id", "attempt", "payload", "headers", "metadata"}
One line out per message:
    {"correlation_id", "result": ...}                     success (HTTP 200)
    {"correlation_id", "error": "text", "retry": false}   failure

Standard library only. Logs go to stderr (the worker logs them); stdout is
for answers only, one line each, flushed.
"""

import datetime
import json
import sys
import time


def now_rfc3339():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (now.microsecond // 1000)


def process(payload):
    """The result for one payload, or raise ProcessingError."""
    if not isinstance(payload, dict):
        payload = {}
    operation = payload.get("operation", "unknown")
    data = payload.get("data", "")
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    if operation == "echo":
        output = data
    elif operation == "uppercase":
        output = text.upper()
    elif operation == "reverse":
        output = text[::-1]
    elif operation == "error":
        raise ProcessingError("Test error", retry=False)
    elif operation == "crash":
        # For the worker's tests: the process dies holding a message.
        print("crashing on request", file=sys.stderr, flush=True)
        sys.exit(3)
    elif operation == "sleep":
        seconds = float(payload.get("seconds", 1))
        time.sleep(seconds)
        output = "slept %s" % payload.get("seconds", 1)
    else:
        output = "Unknown operation: %s" % operation
    return {"output": output, "processed_at": now_rfc3339()}


class ProcessingError(Exception):
    def __init__(self, message, retry):
        super().__init__(message)
        self.retry = retry


def answer(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main():
    print("example processor ready", file=sys.stderr, flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            return  # EOF: the worker is shutting down
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as e:
            print("unreadable message: %s" % e, file=sys.stderr, flush=True)
            answer({"correlation_id": None, "error": "unreadable message", "retry": False})
            continue
        cid = message.get("correlation_id")
        try:
            result = process(message.get("payload"))
        except ProcessingError as e:
            answer({"correlation_id": cid, "error": str(e), "retry": e.retry})
        except Exception as e:  # a bug here: report it, do not die
            answer({"correlation_id": cid, "error": "processor error: %s" % e, "retry": False})
        else:
            answer({"correlation_id": cid, "result": result})


if __name__ == "__main__":
    main()
