"""The engine's blob cache (the `cache` capability)."""

from .errors import call


def get(key):
    """The bytes under `key`, or None."""
    from wit_world.imports import cache as wit

    value = call(wit.get, str(key))
    return None if value is None else bytes(value)


def put(key, value):
    from wit_world.imports import cache as wit

    call(wit.put, str(key), bytes(value))


def remove(key):
    from wit_world.imports import cache as wit

    call(wit.remove, str(key))
