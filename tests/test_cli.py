"""The command line: parity through `p2w embed`, output contract, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from p2w.cli import app
from p2w.core.compose import DEFAULT_ALPHA

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def tv_backbone(tv: Path) -> list[str]:
    return ["--model", str(tv / "open_clip_config.json"), "--pretrained", str(tv / "clip_state_dict.safetensors")]


@pytest.fixture(scope="module")
def golden(tv: Path) -> tuple[dict, dict]:
    return dict(np.load(tv / "expected.npz")), json.loads((tv / "prompts.json").read_text())


@pytest.mark.parametrize(
    ("row", "args", "key"),
    [
        (0, ["{image}", "{caption}", "--mapper", "{tv}/mapper_official.pt"], "composed_features_normalized"),
        (9, ["{image}", "{fiq}", "--mapper", "{tv}/mapper.safetensors"], "composed_features_normalized"),
        (
            21,
            ["{image}", "--prompt", "a cartoon of *", "--mapper", "{tv}/mapper.safetensors"],
            "composed_features_normalized",
        ),
        (3, ["{caption}"], "baseline_text_features_normalized"),
        (10, ["{fiq}", "--mode", "text"], "text_star_features_normalized"),
        (12, ["{image}", "{fiq}", "--mode", "average"], "mixture_features_normalized"),
        (40, ["{image}", "--mode", "average", "--prompt", "{baseline}"], "mixture_features_normalized"),
    ],
)
def test_embed_query_matches_reference(tv, golden, row, args, key):
    exp, prompts = golden
    r = prompts["rows"][row]
    fiq = f"{r['captions'][1]} and {r['captions'][0]}" if "captions" in r else ""
    values = {
        "image": str(tv / r["image_file"]),
        "caption": r.get("caption", ""),
        "fiq": fiq,
        "tv": str(tv),
        "baseline": r["baseline_text"],
    }
    code, out, err = run("embed", "query", *[a.format(**values) for a in args], *tv_backbone(tv))
    assert code == 0, err
    vector = np.array(json.loads(out)[0]["vector"], dtype=np.float32)
    np.testing.assert_allclose(vector, exp[key][row], atol=1e-6, rtol=0)


def test_embed_image_json_and_raw(tv, golden):
    exp, prompts = golden
    files = [str(tv / im["file"]) for im in prompts["images"]]
    code, out, _ = run("embed", "image", *files, *tv_backbone(tv), "--json")
    assert code == 0
    data = json.loads(out)
    assert [d["input"] for d in data] == files
    np.testing.assert_allclose(np.array([d["vector"] for d in data]), exp["image_features_normalized"], atol=1e-6)
    code, out, _ = run("embed", "image", *files, *tv_backbone(tv), "--raw")
    np.testing.assert_allclose(np.array([d["vector"] for d in json.loads(out)]), exp["image_features"], atol=1e-5)


def test_console_script_writes_npy_and_refuses_to_overwrite(tv, golden, tmp_path):
    exp, prompts = golden
    out = tmp_path / "q.npy"
    image = str(tv / prompts["images"][2]["file"])
    args = [
        sys.executable,
        "-m",
        "p2w",
        "embed",
        "query",
        image,
        prompts["rows"][2]["caption"],
        *tv_backbone(tv),
        "--mapper",
        str(tv / "mapper.safetensors"),
        "-o",
        str(out),
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # with -o and no --json, vectors go to the file only
    np.testing.assert_allclose(np.load(out)[0], exp["composed_features_normalized"][2], atol=1e-6)
    before = out.read_bytes()
    again = subprocess.run(args, capture_output=True, text=True, check=False)
    assert again.returncode == 1
    assert again.stderr.strip().startswith("error:") and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_missing_image_is_one_line_error(tmp_path):
    code, out, err = run("embed", "query", str(tmp_path / "nope.jpg"), "in red")
    assert code == 1 and out == ""
    assert err.strip() == f"error: image not found: {tmp_path / 'nope.jpg'}"


def test_embed_query_with_two_images(tiny, images):
    """`p2w embed query A B --prompt "... * ... *"`: the i-th '*' takes the i-th image, as the Python API does."""
    import p2w

    args = ["--model", str(tiny.config), "--pretrained", str(tiny.weights), "--mapper", str(tiny.mapper)]
    prompt = "a * wearing the hat of *"
    code, out, err = run("embed", "query", str(images[0]), str(images[1]), "--prompt", prompt, *args)
    assert code == 0, err
    record = json.loads(out)[0]
    assert record["input"]["image"] == [str(images[0]), str(images[1])] and record["prompt"] == prompt
    engine = p2w.load(model=str(tiny.config), pretrained=str(tiny.weights), mapper=str(tiny.mapper), device="cpu")
    expected = engine.encode_query([str(images[0]), str(images[1])], None, prompt=prompt)
    np.testing.assert_allclose(record["vector"], expected, atol=1e-6)
    code, _, err = run("embed", "query", str(images[0]), str(images[1]), "in red", *args)
    assert code == 1 and "2 query images need a --prompt" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("embed", "query", str(images[0]), "missing.jpg", "in red", *args)
    assert code == 1 and "image not found: missing.jpg" in err


def test_single_argument_that_looks_like_a_missing_image(tmp_path):
    code, _, err = run("embed", "query", str(tmp_path / "shirt.jpg"))
    assert code == 1 and "image not found" in err


def test_offline_tag_fails_fast_with_remedy():
    code, out, err = run("embed", "query", "a dog", "--model", "ViT-B-32", "--pretrained", "openai")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in ("ViT-B-32/openai", "HF_HUB_OFFLINE", "--pretrained PATH", "hub"):
        assert needle in lines[0]
    assert "Traceback" not in err


def test_unknown_model_and_tag_suggest_alternatives():
    code, _, err = run("embed", "query", "a dog", "--model", "ViT-B-31", "--pretrained", "openai")
    assert code == 1 and "ViT-B-32" in err
    code, _, err = run("embed", "query", "a dog", "--model", "ViT-B-32", "--pretrained", "opnai")
    assert code == 1 and "laion2b" in err


def test_pic2word_without_mapper_fails_before_loading_a_model(images):
    code, _, err = run("embed", "query", str(images[0]), "in red", "--mode", "pic2word")  # ViT-L-14 is not here
    assert code == 1 and "--mapper" in err and "HF_HUB_OFFLINE" not in err


def test_without_a_mapper_image_and_words_are_composed_by_slerp(tiny, images):
    """No mode asked for and no mapper: slerp at its default alpha, said on stderr; --mode pic2word is refused."""
    tiny_opts = ("--model", str(tiny.config), "--pretrained", str(tiny.weights), "--json")
    code, out, err = run("embed", "query", str(images[0]), "in red", *tiny_opts)
    assert code == 0, err
    record = json.loads(out)[0]
    assert (record["mode"], record["alpha"], record["prompt"]) == ("slerp", DEFAULT_ALPHA["slerp"], "{text}")
    assert "no mapper for" in err and "training-free slerp" in err and "--mapper" in err
    code, _, err = run("embed", "query", str(images[0]), "in red", "--mode", "pic2word", *tiny_opts)
    assert code == 1 and "--mapper" in err
    code, out, err = run("embed", "query", str(images[0]), "in red", "--mode", "weighted", "--alpha", "0.3", *tiny_opts)
    assert code == 0 and json.loads(out)[0]["alpha"] == 0.3, err
    code, _, err = run("embed", "query", str(images[0]), "in red", "--mode", "average", "--alpha", "0.3", *tiny_opts)
    assert code == 1 and "--alpha weighs the text of modes slerp, weighted" in err
    assert len(err.strip().splitlines()) == 1


def test_prompt_without_star_is_refused(tiny, images):
    code, _, err = run(
        "embed",
        "query",
        str(images[0]),
        "in red",
        "--prompt",
        "a photo , {text}",
        "--mapper",
        str(tiny.mapper),
        "--model",
        str(tiny.config),
        "--pretrained",
        str(tiny.weights),
    )
    assert code == 1 and "'*'" in err


def test_bad_output_suffix_is_refused_before_loading(tmp_path):
    code, _, err = run("embed", "query", "a dog", "-o", str(tmp_path / "v.txt"))
    assert code == 1 and ".npy" in err


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys; from p2w.cli import main; sys.argv=['p2w','--help'];\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'open_clip' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False False"
    done = subprocess.run([sys.executable, "-m", "p2w", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("p2w ")


def test_commands_that_only_read_files_do_not_import_torch(tmp_path):
    """`mapper list/remove/default`, `status` and `--help` answer without torch (or open_clip)."""
    for argv in (["mapper", "list"], ["mapper", "remove", "nope"], ["mapper", "default", "nope"], ["status"]):
        code = (
            f"import sys; from p2w.cli import app\n"
            f"try:\n    app(args={argv!r}, prog_name='p2w')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'open_clip' in sys.modules)"
        )
        env = {**os.environ, "P2W_HOME": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert done.stdout.strip().splitlines()[-1] == "False False", (argv, done.stdout, done.stderr)


def test_every_command_takes_the_common_options():
    """README: every command takes --model, --pretrained, --device and --precision (scripts pass the same to all)."""
    import typer

    def leaves(cmd, path=()):  # type: ignore[no-untyped-def]
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from leaves(sub, (*path, name))
        else:
            yield " ".join(path), {opt for p in cmd.params for opt in p.opts}

    found = dict(leaves(typer.main.get_command(app)))
    assert len(found) >= 12
    for name, opts in found.items():
        assert {"--model", "--pretrained", "--device", "--precision"} <= opts, name


def test_paths_printed_for_copying_are_never_wrapped(tmp_path, monkeypatch):
    """A long path (with spaces) in a message stays on one line when the output is not a terminal."""
    home = tmp_path / ("a folder with a long name " * 4).strip() / "p2w home"
    monkeypatch.setenv("P2W_HOME", str(home))
    code, _, err = run("status")
    assert code == 0
    assert f"no catalogs in {home}; build one with: p2w index DIR" in err.splitlines()


@pytest.mark.skipif(shutil.which("p2w") is None, reason="console script not installed (source checkout)")
def test_console_script_is_installed():
    done = subprocess.run(["p2w", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("p2w ")


def test_import_p2w_does_not_import_torch():
    code = "import sys, p2w; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("mode", [0o666, 0o600])
def test_files_written_for_the_user_follow_the_umask(tmp_path, mode):
    """Contact sheets, `--sheet`, exports were created 0600 by mkstemp; a token file stays 0600 on purpose."""
    import os

    from p2w.atomic import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.png", mode=mode) as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == (0o644 if mode == 0o666 else 0o600)


@pytest.mark.parametrize("group", [[], ["embed"], ["mapper"]])
def test_help_lists_every_command_without_cutting_its_summary(group):
    """`p2w --help` cut every summary at its first period: `index  Add photos to the catalog of a model, e.g.`"""
    done = runner.invoke(app, [*group, "--help"], terminal_width=80)
    listing = done.stdout.split("Commands:")[1].strip().splitlines()
    assert listing and all(not line.rstrip().endswith(("e.g.", "...")) for line in listing), listing
