"""A step plugin in Python: renders a changelog from conventional commit messages."""

from dataclasses import dataclass, field

from arkline_sdk import Plugin, StepFailed, log

plugin = Plugin()


@dataclass
class ChangelogConfig:
    """Settings of `changelog`."""

    commits: list[str] = field(metadata={"description": "Commit subjects, newest first."})
    title: str = field(default="Changelog", metadata={"description": "Heading of the changelog."})


SECTIONS = [("feat", "Features"), ("fix", "Fixes"), ("perf", "Performance")]


def render(title, commits):
    groups = {}
    for subject in commits:
        kind, _, rest = subject.partition(":")
        kind = kind.split("(")[0].rstrip("!").strip()
        groups.setdefault(kind if rest else "other", []).append((rest or subject).strip())
    lines = [f"# {title}", ""]
    for kind, heading in SECTIONS + [("other", "Other")]:
        if groups.get(kind):
            lines.append(f"## {heading}")
            lines.extend(f"- {s}" for s in groups[kind])
            lines.append("")
    return "\n".join(lines)


@plugin.step("changelog", "Render a changelog from commit messages")
def changelog(ctx, cfg: ChangelogConfig):
    if not cfg.commits:
        raise StepFailed("no commits: nothing to put in a changelog")
    log.info(f"{len(cfg.commits)} commits", title=cfg.title)
    return {"changelog": render(cfg.title, cfg.commits)}


# What componentize-py exports.
Plugin = plugin.component()
