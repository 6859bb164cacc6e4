"""A small Dockerfile reader for the deploy tests (no Docker needed).

It parses the instructions, follows ``WORKDIR`` and ``COPY``/``ADD`` to map paths inside the
image back to files of the repository, applies the build's ``.dockerignore`` and checks a
Dockerfile for the mistakes a build or a pod would only reveal later: a missing or ignored
``COPY`` source, a ``CMD``/``ENTRYPOINT`` tool that no installed package provides.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Instruction:
    """One Dockerfile instruction: keyword (upper case), its raw arguments, its first line."""

    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        """The arguments as a list: the JSON (exec) form, else shell-style words."""
        if self.args.lstrip().startswith("["):
            try:
                value = json.loads(self.args)
            except json.JSONDecodeError:
                pass
            else:
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    return value
        return shlex.split(self.args)


@dataclass
class Copy:
    """A ``COPY``/``ADD`` of repository paths ``sources`` to ``dest`` in the image."""

    sources: list[str]
    dest: str
    line: int
    from_stage: str | None = None


@dataclass
class Dockerfile:
    """Parsed instructions plus what they imply: copies, final workdir, user, env, exposed."""

    instructions: list[Instruction]
    copies: list[Copy] = field(default_factory=list)
    workdir: str = "/"
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    exposed: set[int] = field(default_factory=set)

    def get(self, keyword: str) -> list[Instruction]:
        """All instructions with this keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def command(self) -> list[str]:
        """The container's default command: the last ENTRYPOINT followed by the last CMD."""
        ep, cmd = self.get("ENTRYPOINT"), self.get("CMD")
        return (ep[-1].words() if ep else []) + (cmd[-1].words() if cmd else [])

    def source_of(self, image_path: str) -> Path | None:
        """The repository file or folder copied to ``image_path``, or None (later copies win)."""
        image_path = posixpath.normpath(image_path)
        for c in reversed(self.copies):
            if c.from_stage is not None:
                continue
            for src in c.sources:
                src_path = ROOT / src
                if src_path.is_dir():
                    target = c.dest
                elif c.dest.endswith("/") or len(c.sources) > 1:
                    target = posixpath.join(c.dest, posixpath.basename(src.rstrip("/")))
                else:
                    target = c.dest
                target = posixpath.normpath(target)
                if image_path == target:
                    return src_path
                if src_path.is_dir() and image_path.startswith(target.rstrip("/") + "/"):
                    return src_path / posixpath.relpath(image_path, target)
        return None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].rstrip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(b for b in buf if b)))
        buf = []
    if buf:
        out.append((start, " ".join(b for b in buf if b)))
    return out


def _resolve(workdir: str, path: str) -> str:
    path = path if path.startswith("/") else posixpath.join(workdir, path)
    return posixpath.normpath(path) + ("/" if path.endswith("/") else "")


def parse(text: str) -> Dockerfile:
    """Parse a Dockerfile (single stage is enough here; ``COPY --from`` is recorded, not read)."""
    instructions = []
    for line, logical in _logical_lines(text):
        keyword, _, args = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), line))
    df = Dockerfile(instructions)
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            df.workdir = _resolve(df.workdir, ins.args).rstrip("/") or "/"
        elif ins.keyword in ("COPY", "ADD"):
            words = ins.words()
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")),
                              None)
            df.copies.append(Copy([p.rstrip("/") or "." for p in paths[:-1]],
                                  _resolve(df.workdir, paths[-1]), ins.line, from_stage))
        elif ins.keyword == "USER":
            df.user = ins.args.split(":")[0]
        elif ins.keyword == "ENV":
            words = ins.words()
            if len(words) >= 2 and "=" not in words[0]:  # legacy `ENV KEY value`
                df.env[words[0]] = " ".join(words[1:])
            else:
                df.env.update(w.split("=", 1) for w in words)
        elif ins.keyword == "EXPOSE":
            df.exposed.update(int(p.split("/")[0]) for p in ins.args.split())
    return df


def load(path: Path = DOCKERFILE) -> Dockerfile:
    """Parse the Dockerfile at ``path``."""
    return parse(path.read_text())


# ------------------------------------------------------------------ .dockerignore
def ignore_rules(dockerfile: Path = DOCKERFILE) -> list[tuple[bool, re.Pattern[str]]]:
    """The build's ignore rules as (exclude?, regex): ``<Dockerfile>.dockerignore`` next to
    the Dockerfile (BuildKit's choice), else ``.dockerignore`` at the context root."""
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"),
                      ROOT / ".dockerignore"):
        if candidate.is_file():
            text = candidate.read_text()
            break
    else:
        return []
    rules = []
    for raw in text.splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        exclude = not pat.startswith("!")
        pat = posixpath.normpath(pat.lstrip("!").strip().lstrip("/"))
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        rules.append((exclude, re.compile(rx + "$")))
    return rules


def is_ignored(rel_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out ``rel_path`` (a path or one of its folders
    matches; the last matching rule decides, ``!`` rules re-include)."""
    parts = Path(rel_path).parts
    ignored = False
    for exclude, rx in rules:
        if any(rx.match("/".join(parts[:k])) for k in range(1, len(parts) + 1)):
            ignored = exclude
    return ignored


# ------------------------------------------------------------------ checks
def provided_scripts() -> set[str]:
    """Console scripts that ``pip install .`` puts in the image: this project's
    (pyproject.toml) and those of its direct dependencies (as installed here)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = set(project.get("scripts", {}))
    for req in project.get("dependencies", []):
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        try:
            eps = distribution(name).entry_points
        except PackageNotFoundError:
            continue
        scripts |= {e.name for e in eps if e.group == "console_scripts"}
    return scripts


def copy_problems(df: Dockerfile, dockerfile: Path = DOCKERFILE) -> list[str]:
    """COPY/ADD sources that are missing from the repository or left out of the context."""
    rules = ignore_rules(dockerfile)
    problems = []
    for c in df.copies:
        if c.from_stage is not None:
            continue
        for src in c.sources:
            path = ROOT / src
            if not path.exists():
                problems.append(f"line {c.line}: COPY source {src!r} is not in the repository")
                continue
            if src != "." and is_ignored(src, rules):
                problems.append(f"line {c.line}: COPY source {src!r} is excluded by "
                                ".dockerignore")
                continue
            files = path.rglob("*") if path.is_dir() else []
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc" \
                        and is_ignored(rel, rules):
                    problems.append(f"line {c.line}: {rel!r} (under COPY {src!r}) is "
                                    "excluded by .dockerignore")
    return problems


def command_problems(df: Dockerfile) -> list[str]:
    """The default command must be exec form and run a tool the installed packages provide."""
    problems = []
    for ins in df.get("CMD") + df.get("ENTRYPOINT"):
        if not ins.args.lstrip().startswith("["):
            problems.append(f"line {ins.line}: {ins.keyword} should use the exec (JSON) form")
    cmd = df.command()
    if not cmd:
        problems.append("no CMD or ENTRYPOINT")
    elif cmd[0] not in provided_scripts():
        problems.append(f"the default command {cmd[0]!r} is not a console script of daskmm "
                        "or its dependencies")
    return problems
