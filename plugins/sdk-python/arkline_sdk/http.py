"""Outbound HTTP to granted hosts (the `http` capability)."""

import dataclasses
import json as _json


@dataclasses.dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return _json.loads(self.body)


def send(method, url, headers=None, body=None, timeout_ms=None, follow_redirects=True):
    """Sends one request; raises a `HostError` when refused (a host not
    granted), returns the response whatever its status."""
    from wit_world.imports import http as wit
    from wit_world.imports import types

    from .errors import call

    if isinstance(body, str):
        body = body.encode()
    request = wit.Request(
        str(method).upper(), str(url),
        [types.KeyValue(str(k), str(v)) for k, v in (headers or {}).items()],
        None if body is None else bytes(body), timeout_ms, bool(follow_redirects),
    )
    r = call(wit.send, request)
    return Response(r.status, {kv.key: kv.value for kv in r.headers}, bytes(r.body))


def get(url, **kw):
    return send("GET", url, **kw)


def post(url, body=None, **kw):
    return send("POST", url, body=body, **kw)
