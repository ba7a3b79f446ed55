"""An arkline step plugin in Python."""

from dataclasses import dataclass, field

from arkline_sdk import Plugin, StepFailed, log

plugin = Plugin()


@dataclass
class Hello:
    """Settings of the `hello` step."""

    name: str = field(metadata={"description": "Who to greet."})
    shout: bool = field(default=False, metadata={"description": "Greet in capitals."})


def greeting(name, shout):
    text = f"hello, {name}!"
    return text.upper() if shout else text


@plugin.step("hello", "Greets someone")
def hello(ctx, cfg: Hello):
    if not cfg.name.strip():
        raise StepFailed("`name` is blank: say who to greet")
    log.info(f"greeting {cfg.name}")
    return {"greeting": greeting(cfg.name, cfg.shout)}


# What componentize-py exports (None in plain Python, where the tests run).
Plugin = plugin.component()
