"""The errors of steps and of host calls, as in the Rust SDK."""


class StepFailed(Exception):
    """Raise it to fail the step with a message (WIT `step-error.failed`)."""


class HostError(Exception):
    """A capability call was refused or failed; never a trap. One subclass per
    kind of the WIT `host-error`."""

    kind = "failed"


class Denied(HostError):
    """Outside the biz's effective capabilities (requested and granted)."""

    kind = "denied"


class InvalidArgument(HostError):
    """An argument is invalid, e.g. a path that leaves the workspace."""

    kind = "invalid-argument"


class Timeout(HostError):
    """The call did not finish in its time limit."""

    kind = "timeout"


class TooLarge(HostError):
    """A size limit was passed; the message names the limit."""

    kind = "too-large"


class Failed(HostError):
    """Any other failure, described."""

    kind = "failed"


def from_wit(error):
    """The exception for a WIT `host-error` value."""
    name = type(error).__name__
    message = getattr(error, "value", None)
    for cls, suffix in ((Denied, "Denied"), (InvalidArgument, "InvalidArgument"),
                        (Timeout, "Timeout"), (TooLarge, "TooLarge"), (Failed, "Failed")):
        if name.endswith(suffix):
            return cls(message if message is not None else cls.kind)
    return Failed(str(error))


def call(fn, *args):
    """Calls an imported host function, turning its error into a `HostError`."""
    from componentize_py_types import Err

    try:
        return fn(*args)
    except Err as e:
        raise from_wit(e.value) from None
