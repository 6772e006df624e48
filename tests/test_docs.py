"""Documentation that must not drift from the code: every CLI option is documented, README's test command is CI's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from p2w.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _options(cmd: Any, path: str = "") -> list[tuple[str, str]]:
    found = [(path, opt) for p in cmd.params for opt in p.opts if opt.startswith("--") and opt != "--help"]
    if hasattr(cmd, "commands"):  # a group (Typer's own Group class)
        for name, sub in cmd.commands.items():
            found += _options(sub, f"{path} {name}".strip())
    return found


def test_every_cli_option_is_in_docs():
    doc = (ROOT / "docs" / "cli.md").read_text()
    cli = typer.main.get_command(app)
    missing = [f"{cmd}: {opt}" for cmd, opt in _options(cli) if not re.search(rf"(?<![\w-]){opt}(?![\w-])", doc)]
    assert not missing, missing
    assert len(_options(cli)) > 20  # the walk really reached the subcommands
    for name in ("embed image", "embed query", "mapper import"):
        assert f"p2w {name}" in doc


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    setup = [b.strip() for b in blocks if "pytest" in b]
    assert setup, "README has no test command"
    test_command = setup[0].split("&&")[-1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_job_is_the_offline_demo():
    """README's first command runs `p2w demo`, which tests/test_microworld.py runs end to end."""
    readme = (ROOT / "README.md").read_text()
    first = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)[0].strip()
    assert first.split("&&")[-1].strip() == "p2w demo"
    assert "pip install" in first.split("&&")[0]
