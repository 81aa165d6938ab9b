#!/usr/bin/env python3
"""The Python side of tests/tests/sdk_interop.rs: the official CloudEvents Python SDK (PyPI
`cloudevents`) builds, sends and parses events; only the standard library does HTTP.

Commands (each reads one JSON document on stdin and prints one on stdout):

  send URL HOST binary|structured
      stdin:  {"attributes": {...}, "data": DATA, "headers": {"traceparent": "..."}}
      Builds a `CloudEvent(attributes, data)` with the SDK, serialises it with the SDK's
      `to_binary` or `to_structured` (their default data marshallers), and POSTs it with
      http.client to URL with `Host: HOST` (plus the extra headers).
      stdout: {"status": 202, "headers": [[name, value], ...], "body_base64": "..."}: the answer's
      status and the request exactly as it went on the wire (header lines and body bytes).

  parse
      stdin:  [{"headers": [[name, value], ...], "body_base64": "..."}, ...]: HTTP requests (one a
      sender made, one a sink received).
      Parses each with the SDK's `from_http(headers, body)`, as a server would.
      stdout: [{"attributes": {name: value, ...}, "data": DATA}, ...], one per request

  version
      stdout: {"cloudevents": "2.2.0", "python": "3.11.7"}

DATA is null, {"json": value}, {"text": "..."} or {"base64": "..."} (bytes).

Exit status: 0 on success, 3 if the SDK is not installed (with the install command on stderr),
1 on any other error (with the traceback on stderr).
"""

import base64
import http.client
import json
import platform
import sys
import urllib.parse

try:
    import cloudevents

    try:
        # cloudevents 2.x keeps the 1.x API under cloudevents.v1: the HTTP CloudEvent and
        # from_http, and to_binary/to_structured in conversion (cloudevents.http's own
        # to_binary/to_structured are deprecated aliases of these).
        from cloudevents.v1.conversion import to_binary, to_structured
        from cloudevents.v1.http import CloudEvent, from_http
    except ImportError:
        # cloudevents 1.x: the same API at its original place.
        from cloudevents.conversion import to_binary, to_structured
        from cloudevents.http import CloudEvent, from_http
except ImportError as e:
    sys.stderr.write(
        f"the CloudEvents Python SDK is not installed ({e}): "
        "run `python3 -m pip install 'cloudevents==2.2.0'` (scripts/test.sh does)\n"
    )
    sys.exit(3)


def data_from_json(spec):
    if spec is None:
        return None
    if "json" in spec:
        return spec["json"]
    if "text" in spec:
        return spec["text"]
    return base64.b64decode(spec["base64"])


def data_to_json(data):
    if data is None:
        return None
    if isinstance(data, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(data)).decode("ascii")}
    if isinstance(data, str):
        return {"text": data}
    return {"json": data}


class RecordingConnection(http.client.HTTPConnection):
    """An HTTPConnection that keeps every byte it writes: what the SDK's headers became on the
    wire (http.client turns non-string header values into text with str())."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = bytearray()

    def send(self, data):
        self.sent += data
        super().send(data)


def send(url, host, mode):
    spec = json.load(sys.stdin)
    event = CloudEvent(spec["attributes"], data_from_json(spec.get("data")))
    if mode == "binary":
        headers, body = to_binary(event)
    elif mode == "structured":
        headers, body = to_structured(event)
    else:
        raise SystemExit(f"mode must be binary or structured, not {mode!r}")
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = dict(headers)
    headers.update(spec.get("headers", {}))
    headers["Host"] = host
    target = urllib.parse.urlsplit(url)
    conn = RecordingConnection(target.hostname, target.port, timeout=15)
    conn.request("POST", target.path or "/", body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    head, _, sent_body = bytes(conn.sent).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    wire_headers = [[n, v.strip()] for n, v in (line.split(":", 1) for line in lines)]
    json.dump(
        {
            "status": resp.status,
            "headers": wire_headers,
            "body_base64": base64.b64encode(sent_body).decode("ascii"),
        },
        sys.stdout,
    )


def parse_one(req):
    headers = {}
    for name, value in req["headers"]:
        # A server framework hands over one value per name; the first one, as sdk-go reads it.
        headers.setdefault(name, value)
    event = from_http(headers, base64.b64decode(req["body_base64"]))
    return {
        "attributes": {name: event[name] for name in event},
        "data": data_to_json(event.get_data()),
    }


def parse():
    json.dump([parse_one(req) for req in json.load(sys.stdin)], sys.stdout)


def main(argv):
    match argv:
        case ["send", url, host, mode]:
            send(url, host, mode)
        case ["parse"]:
            parse()
        case ["version"]:
            json.dump(
                {"cloudevents": cloudevents.__version__, "python": platform.python_version()},
                sys.stdout,
            )
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
