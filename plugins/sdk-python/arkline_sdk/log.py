"""The step log (always granted): levelled lines with fields."""


def _log(level, message, fields):
    try:
        from wit_world.imports import log as wit
        from wit_world.imports import types
    except ImportError:
        # Plain Python (a step's unit tests): to stderr.
        import sys

        extra = "".join(f" {k}={v}" for k, v in fields.items())
        print(f"{level.lower():5} {message}{extra}", file=sys.stderr)
        return

    wit.log(getattr(wit.Level, level), str(message),
            [types.KeyValue(str(k), str(v)) for k, v in fields.items()])


def trace(message, **fields):
    _log("TRACE", message, fields)


def debug(message, **fields):
    _log("DEBUG", message, fields)


def info(message, **fields):
    """`log.info("built", target="x86_64")`."""
    _log("INFO", message, fields)


def warn(message, **fields):
    _log("WARN", message, fields)


def error(message, **fields):
    _log("ERROR", message, fields)
