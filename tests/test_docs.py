"""Documentation that must not drift from the code: docs/cli.md's --help blocks are the CLI's own (made by
tools/cli_docs.py), every CLI option is documented, README's test command is CI's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer

from p2w.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> ModuleType:
    """A script of tools/ as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"p2w_tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_docs() -> ModuleType:
    return _tool("cli_docs")


def test_cli_md_help_blocks_are_the_clis_own(cli_docs: ModuleType):
    """Every command's block in docs/cli.md is its `--help` now; after a CLI change: python tools/cli_docs.py."""
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    new, missing = cli_docs.update(doc)
    assert not missing, f"docs/cli.md has no --help block for {missing}: run `python tools/cli_docs.py`"
    blocks = {m["name"]: m["body"] for m in cli_docs.BLOCK.finditer(doc)}
    now = {m["name"]: m["body"] for m in cli_docs.BLOCK.finditer(new)}
    stale = [name for name in now if blocks[name] != now[name]]
    assert not stale, f"docs/cli.md is stale for {stale}: run `python tools/cli_docs.py`"
    assert new == doc
    assert {"p2w", "p2w embed image", "p2w index", "p2w mapper default"} <= set(blocks)


def test_cli_help_renders_the_same_in_any_terminal(cli_docs: ModuleType, monkeypatch: pytest.MonkeyPatch):
    before = cli_docs.render("p2w search")
    for name, value in {"COLUMNS": "40", "LINES": "10", "TERM": "xterm-256color", "FORCE_COLOR": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert cli_docs.render("p2w search") == before
    assert "\x1b" not in before
    assert max(len(line) for line in before.splitlines()) == cli_docs.WIDTH
    assert before.lstrip().startswith("Usage: p2w search [OPTIONS]")


def test_cli_docs_check_names_the_command_to_run(cli_docs: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture):
    doc = tmp_path / "cli.md"
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    doc.write_text(current.replace("Show this message and exit.", "Show this message.", 1), encoding="utf-8")
    assert cli_docs.main(["--check", "--doc", str(doc)]) == 1
    assert "run python tools/cli_docs.py" in capsys.readouterr().err
    assert cli_docs.main(["--doc", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == cli_docs.update(current)[0]
    assert cli_docs.main(["--check", "--doc", str(doc)]) == 0


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


def _module_names() -> set[str]:
    """Every module under src/p2w as a dotted name (a package by its own name, not ``__init__``)."""
    src = ROOT / "src"
    names = set()
    for path in (src / "p2w").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_architecture_md_lists_every_module():
    """docs/architecture.md's module table: every module under src/p2w, one row each, and no module that is gone."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(p2w[\w.]*)` \|", section, flags=re.M)
    modules = _module_names()
    assert not modules - set(rows), f"add to docs/architecture.md's module table: {sorted(modules - set(rows))}"
    assert not set(rows) - modules, (
        f"docs/architecture.md names modules that do not exist: {sorted(set(rows) - modules)}"
    )
    assert len(rows) == len(set(rows)), "a module has two rows in docs/architecture.md"
    assert {"p2w.engine", "p2w.core.walk", "p2w.cli.root"} <= modules  # the walk found the tree


def _resolves(name: str) -> bool:
    """Whether a dotted name such as ``p2w.library.search.open_catalog`` is a module or an attribute of one."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_python_api_names_exist():
    """Every ``p2w.`` name docs/python-api.md mentions is a module or an attribute of one (no stale import path)."""
    doc = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    names = set(re.findall(r"\bp2w(?:\.[A-Za-z_]\w*)+", doc)) | {
        f"{module}.{name.strip()}"
        for module, names in re.findall(r"^from (p2w[\w.]*) import ([\w, ]+)$", doc, flags=re.M)
        for name in names.split(",")
    }
    assert len(names) > 20
    missing = sorted(name for name in names if not _resolves(name))
    assert not missing, f"docs/python-api.md names what does not exist: {missing}"


def test_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The blocks of docs/python-api.md marked `<!-- run -->` run, in order and in one namespace, offline."""
    doc = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^<!-- run -->\n```python\n(.*?)^```$", doc, flags=re.S | re.M)
    assert len(blocks) >= 3
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "python_api_md"}
    for i, code in enumerate(blocks, 1):
        exec(compile(code, f"docs/python-api.md, run block {i}", "exec"), namespace)
