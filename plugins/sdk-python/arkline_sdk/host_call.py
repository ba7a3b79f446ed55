"""Named calls into the host's native plugins (the `host-call` capability)."""

from .errors import call as _call


def call(name, payload=b""):
    """Calls `name` with `payload`; returns its answer's bytes."""
    from wit_world.imports import host_call as wit

    if isinstance(payload, str):
        payload = payload.encode()
    return bytes(_call(wit.call, str(name), bytes(payload)))
