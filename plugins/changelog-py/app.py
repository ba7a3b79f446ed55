"""A step plugin in Python: renders a changelog from conventional commit messages."""

from dataclasses import dataclass, field

from typing import Optional

from arkline_sdk import Denied, Plugin, StepFailed, log, process

plugin = Plugin()


@dataclass
class ChangelogConfig:
    """Settings of `changelog`."""

    commits: list[str] = field(
        default_factory=list, metadata={"description": "Commit subjects, newest first."}
    )
    range: Optional[str] = field(
        default=None,
        metadata={
            "description": "Read the subjects with `git log` of this range (`v1.0.0..HEAD`) in "
            "the workspace instead (needs `process: git`)."
        },
    )
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


def git_subjects(commit_range):
    try:
        out = process.run("git", ["log", "--format=%s", commit_range, "--"], stream_to_log=False)
    except Denied as e:
        raise StepFailed(f"`range` reads commits with git, which this biz may not run: {e}")
    if not out.success:
        raise StepFailed(f"git log {commit_range}: {out.stderr.decode(errors='replace').strip()}")
    return [line for line in out.stdout.decode().splitlines() if line]


@plugin.step("changelog", "Render a changelog from commit messages")
def changelog(ctx, cfg: ChangelogConfig):
    commits = cfg.commits or (git_subjects(cfg.range) if cfg.range else [])
    if not commits:
        raise StepFailed("no commits: nothing to put in a changelog")
    log.info(f"{len(commits)} commits", title=cfg.title)
    return {"changelog": render(cfg.title, commits), "count": len(commits)}


# What componentize-py exports.
Plugin = plugin.component()
