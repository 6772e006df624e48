"""Keep the ``--help`` reference in docs/cli.md generated from the CLI itself, so it cannot drift:

    python tools/cli_docs.py          # rewrite the generated blocks of docs/cli.md in place
    python tools/cli_docs.py --check  # exit 1, naming this command, when docs/cli.md is stale

The hand-written prose of docs/cli.md stays as it is; only what lies between a pair of markers is generated:

    <!-- p2w-help: p2w index -->
    ```text
    (the output of `p2w index --help`)
    ```
    <!-- /p2w-help -->

Every visible command and group of the Typer app (found by walking click's command tree, so a new command is
noticed) must have exactly one block. A command without a block gets one appended at the end of the file, under
its own heading, to be moved and described by hand; a block naming a command that no longer exists is an error.

The help text is rendered in-process, the way Typer renders it, but on a rich console of a fixed width (``WIDTH``),
without colour, on a string buffer that is not a terminal, with trailing spaces stripped: the same text on any
machine and in any terminal, whatever ``COLUMNS``, ``TERM`` or ``FORCE_COLOR`` say.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import typer.rich_utils

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
WIDTH = 100
PROG = "p2w"
REGENERATE = "python tools/cli_docs.py"
DOC_CPUS = 8  # help texts that state this machine's defaults (--workers) are shown as on an 8-core machine

# markers stand alone on their lines (a marker quoted in the prose is not one)
BLOCK = re.compile(r"^<!-- p2w-help: (?P<name>[^>]*?) -->\n(?P<body>.*?)^<!-- /p2w-help -->$", re.S | re.M)
OPEN_MARKER = re.compile(r"^<!-- p2w-help: (?P<name>[^>]*?) -->$", re.M)
CLOSE_MARKER = re.compile(r"^<!-- /p2w-help -->$", re.M)


class StaleError(Exception):
    """docs/cli.md cannot be brought up to date without a person (a block for a command that is gone)."""


def root_command() -> Any:
    """The click command behind the ``p2w`` Typer app (importing ``p2w.cli`` registers every command).

    Typed ``Any``: recent Typer versions carry their own copy of click, older ones use click itself, so groups are
    told apart by what they do (``list_commands``), not by their class."""
    from p2w.cli import app
    from p2w.core.devices import workers_help

    root = typer.main.get_command(app)
    for cmd in _all(root):
        for param in cmd.params:
            if "--workers" in getattr(param, "opts", ()):  # the same on every machine that renders the docs
                param.help = param.help.replace(workers_help(), workers_help(cpus=DOC_CPUS))
    return root


def _all(cmd: Any) -> Iterator[Any]:
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _all(sub)


def commands(cmd: Any = None, path: tuple[str, ...] = (PROG,)) -> dict[str, Any]:
    """Every visible command and group, keyed by its command line (``"p2w"``, ``"p2w mapper import"``), in order."""
    cmd = root_command() if cmd is None else cmd
    found = {" ".join(path): cmd}
    if hasattr(cmd, "list_commands"):  # a group
        ctx = _make(cmd, path[-1], None)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found.update(commands(sub, (*path, name)))
    return found


@contextlib.contextmanager
def _fixed_console() -> Iterator[io.StringIO]:
    """Typer's help console at ``WIDTH`` columns, no colour, not a terminal, writing into the yielded buffer.

    Typer reads these settings from module globals at each call, so they are set here and restored after."""
    names = ("MAX_WIDTH", "COLOR_SYSTEM", "FORCE_TERMINAL")
    saved = {name: getattr(typer.rich_utils, name) for name in names}
    buffer = io.StringIO()
    try:
        typer.rich_utils.MAX_WIDTH = WIDTH
        typer.rich_utils.COLOR_SYSTEM = None
        typer.rich_utils.FORCE_TERMINAL = False
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        for name, value in saved.items():
            setattr(typer.rich_utils, name, value)


def _make(cmd: Any, name: str, parent: Any) -> Any:
    """A context for ``cmd``, as click makes one; the width also fixed for click's own (rich-less) help formatter."""
    settings = {**cmd.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return cmd.context_class(cmd, info_name=name, parent=parent, **settings)


def _context(line: str, root: Any) -> Any:
    """The click context ``line --help`` would have: a chain of parents, so usage reads ``p2w mapper import``.

    No group callback runs (the app's root callback configures logging; rendering help must change nothing)."""
    names = line.split()
    ctx = _make(root, names[0], None)
    cmd = root
    for name in names[1:]:
        sub = cmd.get_command(ctx, name)
        assert sub is not None, line
        ctx = _make(sub, name, ctx)
        cmd = sub
    return ctx


def render(line: str, root: Any = None) -> str:
    """The text of ``line --help`` (e.g. ``render("p2w index")``) as it is checked in: deterministic, no colour."""
    root = root_command() if root is None else root
    ctx = _context(line, root)
    with _fixed_console() as buffer:
        text = ctx.command.get_help(ctx)  # Typer's rich help prints to stdout and returns ""; click's returns it
        if text:
            print(text)
    lines = [row.rstrip() for row in buffer.getvalue().splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def block(line: str, body: str) -> str:
    """One generated block, markers included."""
    return f"<!-- p2w-help: {line} -->\n```text\n{body}```\n<!-- /p2w-help -->"


def _section(line: str, body: str) -> str:
    """A new section for a command the file lacks, to be moved and described by hand."""
    note = f"(Added by `{REGENERATE}`: move this section where it belongs and describe the command.)"
    return f"\n## `{line}`\n\n{note}\n\n{block(line, body)}\n"


def update(doc: str, root: Any = None) -> tuple[str, list[str]]:
    """``doc`` with every block regenerated, and the command lines whose blocks had to be appended.

    Raises ``StaleError`` for a block naming no command, a command with two blocks, or a malformed marker."""
    root = root_command() if root is None else root
    known = commands(root)
    opened = [m.group("name") for m in OPEN_MARKER.finditer(doc)]
    closed = [m.group("name") for m in BLOCK.finditer(doc)]
    if opened != closed or len(CLOSE_MARKER.findall(doc)) != len(closed):
        raise StaleError("a `<!-- p2w-help: ... -->` marker lacks its `<!-- /p2w-help -->` line")
    unknown = sorted(set(closed) - set(known))
    if unknown:
        raise StaleError(f"help blocks for commands that do not exist: {', '.join(unknown)}; remove their sections")
    twice = sorted({name for name in closed if closed.count(name) > 1})
    if twice:
        raise StaleError(f"more than one help block for: {', '.join(twice)}")
    rendered = {line: render(line, root) for line in known}
    new = BLOCK.sub(lambda m: block(m.group("name"), rendered[m.group("name")]), doc)
    missing = [line for line in known if line not in closed]
    if missing:
        new = new.rstrip("\n") + "\n" + "".join(_section(line, rendered[line]) for line in missing)
    return new, missing


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is stale; change nothing")
    parser.add_argument("--doc", type=Path, default=DOC, help="the file (default docs/cli.md)")
    args = parser.parse_args(argv)
    doc = args.doc.read_text(encoding="utf-8")
    try:
        new, missing = update(doc)
    except StaleError as exc:
        print(f"error: {_shown(args.doc)}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != doc:
            shown = _shown(args.doc)
            print(f"{shown} is stale (its --help blocks differ from the CLI's): run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if new != doc:
        args.doc.write_text(new, encoding="utf-8")
    for line in missing:
        print(
            f"appended a section for `{line}` at the end of {_shown(args.doc)}: move it and describe it",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
