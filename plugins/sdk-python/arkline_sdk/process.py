"""Running a granted program (the `process` capability)."""

import dataclasses
import typing

from .errors import call


@dataclasses.dataclass
class Output:
    """How the program ended and what it wrote."""

    code: typing.Optional[int]
    """Its exit code; None when a signal ended it or it timed out."""
    signal: typing.Optional[int]
    timed_out: bool
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool

    @property
    def success(self):
        return self.code == 0


def run(program, args=(), env=None, cwd=None, stdin=None, timeout_ms=None, stream_to_log=True):
    """Runs `program` (a name the engine granted); raises a `HostError` when the
    call is refused, returns the `Output` however the program ended."""
    from wit_world.imports import process as wit
    from wit_world.imports import types

    command = wit.Command(
        str(program), [str(a) for a in args],
        [types.KeyValue(str(k), str(v)) for k, v in (env or {}).items()],
        cwd, None if stdin is None else bytes(stdin), timeout_ms, bool(stream_to_log),
    )
    out = call(wit.run, command)
    status = out.status
    name = type(status).__name__
    code = status.value if name.endswith("Exited") else None
    signal = status.value if name.endswith("Signaled") else None
    return Output(code, signal, name.endswith("TimedOut"), bytes(out.stdout), bytes(out.stderr),
                  out.stdout_truncated, out.stderr_truncated)
