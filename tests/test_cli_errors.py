"""Every command, driven through the CLI's entry point as a new user would, with a path that does
not exist, a file where a folder is expected and an unreadable file: one ``error:`` line that
names the problem, exit 2, never "internal error" and never a traceback. A run whose images
fail ends with one summary line, even under ``--quiet``. The CLI modules compute nothing."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conceptree.cli
from conceptree import cli

from .helpers import resnet10t_weights

TINY = ["--model", "timm:resnet10t", "--weights", "w.pth", "--model-arg", "num_classes=10"]
LOCAL = ["--executor", "local"]
QUIET = ["--quiet"]

# (command, case) -> (arguments, the path the error line must name)
CASES = {
    ("explain", "missing"): (["explain", "missing.jpg", *TINY, *QUIET], "missing.jpg"),
    ("explain", "file-as-folder"): (["explain", "x.png", *TINY, "--out", "afile.txt", *QUIET], "afile.txt"),
    ("explain", "unreadable"): (["explain", "bad.jpg", *TINY, *QUIET], "bad.jpg"),
    ("demo", "missing"): (["demo", "--index", "missing_dir", *QUIET], "missing_dir"),
    ("demo", "file-as-folder"): (["demo", "--out", "afile.txt", *QUIET], "afile.txt"),
    ("demo", "unreadable"): (["demo", "--index", "corrupt", *QUIET], "corrupt"),
    ("explain-many", "missing"): (["explain-many", "missing_dir", *TINY, *LOCAL, *QUIET], "missing_dir"),
    ("explain-many", "file-as-folder"): (["explain-many", "imgs", *TINY, "--out", "afile.txt", *LOCAL, *QUIET],
                                         "afile.txt"),
    ("explain-many", "unreadable"): (["explain-many", "imgs", *TINY, "--index", "corrupt", *LOCAL, *QUIET], "corrupt"),
    ("index", "missing"): (["index", "missing_dir", *TINY, *LOCAL, *QUIET], "missing_dir"),
    ("index", "file-as-folder"): (["index", "imgs", *TINY, "--out", "afile.txt", *LOCAL, *QUIET], "afile.txt"),
    ("index", "unreadable"): (["index", "corrupt", *TINY, *LOCAL, *QUIET], "annotations.json"),
    ("dictionary", "missing"): (["dictionary", "missing_dir", *QUIET], "missing_dir"),
    ("dictionary", "file-as-folder"): (["dictionary", "corrupt", "--out", "afile.txt", *QUIET], "afile.txt"),
    ("dictionary", "unreadable"): (["dictionary", "corrupt", *QUIET], "corrupt"),
    ("atlas", "missing"): (["atlas", "missing_dir", *TINY], "missing_dir"),
    ("atlas", "file-as-folder"): (["atlas", "afile.txt", *TINY], "afile.txt"),
    ("atlas", "unreadable"): (["atlas", "corrupt", *TINY], "corrupt"),
    ("evaluate", "missing"): (["evaluate", "--data", "missing_dir", *TINY, *QUIET], "missing_dir"),
    ("evaluate", "file-as-folder"): (["evaluate", "--data", "corrupt", *TINY, "--out", "afile.txt", *QUIET],
                                     "afile.txt"),
    ("evaluate", "unreadable"): (["evaluate", "--data", "corrupt", *TINY, *QUIET], "annotations.json"),
    ("compare", "missing"): (["compare", "missing_dir", "x.png", *TINY, *QUIET], "missing_dir"),
    ("compare", "file-as-folder"): (["compare", "afile.txt", "x.png", *TINY, *QUIET], "afile.txt"),
    ("compare", "unreadable"): (["compare", "corrupt", "x.png", *TINY, *QUIET], "corrupt"),
    ("explain", "unreadable-model-config"): (["explain", "x.png", "--model-config", "bad.json", *QUIET], "bad.json"),
}


def _image(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder with a tiny model's weights, images, a file, a corrupt index / explanation /
    annotations folder and a corrupt model config."""
    root = tmp_path_factory.mktemp("cli_errors")
    resnet10t_weights(root / "w.pth", 0)
    (root / "imgs").mkdir()
    for i in range(2):
        _image(root / "imgs" / f"p{i}.png", i)
    _image(root / "x.png", 9)
    (root / "bad.jpg").write_bytes(b"not an image")
    (root / "afile.txt").write_text("a file, not a folder\n")
    (root / "corrupt").mkdir()
    for name in ("index.json", "explanation.json", "annotations.json", "maps.npz"):
        (root / "corrupt" / name).write_text("{not json")
    (root / "bad.json").write_text("{not json")
    return root


def run_main(args: list[str], capsys) -> tuple[int, list[str], str]:
    """``conceptree ARGS`` in this process: (exit code, stderr lines, stdout)."""
    try:
        cli.main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


@pytest.mark.parametrize("command,case", list(CASES), ids=[f"{c}-{k}" for c, k in CASES])
def test_every_command_refuses_a_bad_path_in_one_line(scratch, monkeypatch, capsys, command, case):
    args, named = CASES[command, case]
    monkeypatch.chdir(scratch)
    before = sorted(p.name for p in scratch.iterdir())
    code, err, out = run_main(args, capsys)
    assert code == 2, (code, err, out)
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: ") and "internal error" not in line and "Traceback" not in line, line
    assert named in line, line
    assert sorted(p.name for p in scratch.iterdir()) == before  # nothing half-written


def test_index_quiet_ends_with_one_summary_line_of_its_failures(scratch, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "refs"
    folder.mkdir()
    _image(folder / "a.png", 1)
    (folder / "b.jpg").write_bytes(b"not an image")
    (folder / "c.jpg").write_bytes(b"\xff\xd8 truncated")
    monkeypatch.chdir(scratch)
    out_dir = tmp_path / "idx"
    code, err, out = run_main(["index", str(folder), *TINY, "--out", str(out_dir), *LOCAL, *QUIET], capsys)
    assert code == 0 and out == ""
    assert len(err) == 1, err
    assert err[0].startswith(f"2 of 3 images failed (see {out_dir / 'index.json'}): b.jpg: "), err
    assert "c.jpg: " in err[0] and "a.png" not in err[0]
    records = json.loads((out_dir / "index.json").read_text())["images"]
    assert [r["status"] for r in records] == ["ok", "failed", "failed"]
    # a rerun has nothing to compute and still says so; a run without failures says nothing
    assert run_main(["index", str(folder), *TINY, "--out", str(out_dir), *LOCAL, *QUIET], capsys)[1] == err
    (folder / "b.jpg").unlink()
    (folder / "c.jpg").unlink()
    code, err, out = run_main(["index", str(folder), *TINY, "--out", str(tmp_path / "idx2"), *LOCAL, *QUIET], capsys)
    assert (code, err, out) == (0, [], "")


def test_explain_many_and_atlas_through_the_cli(scratch, tmp_path, monkeypatch, capsys):
    """explain-many --quiet ends with the summary line of its failed image; atlas (the library's
    atlas_from_run) picks the class explained most often, refuses one the run did not explain."""
    folder = tmp_path / "photos"
    folder.mkdir()
    from skimage import data

    photo = data.chelsea()
    Image.fromarray(photo).save(folder / "a.png")
    Image.fromarray(photo[:, ::-1]).save(folder / "b.png")
    (folder / "c.jpg").write_bytes(b"not an image")
    monkeypatch.chdir(scratch)
    run = tmp_path / "run"
    fast = ["--max-neurons", "60", "--stability", "0", "--no-graph", "--hierarchy", "none"]
    code, err, out = run_main(["explain-many", str(folder), *TINY, *fast, "--out", str(run), *LOCAL, *QUIET], capsys)
    assert code == 0 and out == "", err
    assert len(err) == 1 and err[0].startswith(f"1 of 3 images failed (see {run / 'index.json'}): c.jpg: "), err

    records = [r for r in json.loads((run / "index.json").read_text())["images"] if r["status"] == "ok"]
    assert len(records) == 2
    from conceptree.explanation import Explanation

    classes = [Explanation.load(run / r["folder"]).target.index for r in records]
    code, err, out = run_main(["atlas", str(run), *TINY, "--out", str(tmp_path / "atlas")], capsys)
    assert code == 0 and err == [], err
    saved = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert saved["n_images"] == sum(c == classes[0] for c in classes)  # the first class on a tie
    assert out.startswith(f"{saved['target']}: {saved['n_images']} images") and "atlas.html" in out

    unexplained = next(i for i in range(10) if i not in classes)
    code, err, _ = run_main(["atlas", str(run), *TINY, "--target", str(unexplained), "--out", str(tmp_path / "a2")],
                            capsys)
    assert code == 2 and len(err) == 1 and f"no explanation of class '{unexplained}'" in err[0], err


FORBIDDEN = {"torch", "numpy", "scipy", "sklearn", "fastcluster", "timm", "torchvision"}


def test_cli_modules_compute_nothing():
    """No CLI module imports a numerical library, at module level or inside a function: the
    commands parse, call the library and print (docs/architecture.md)."""
    folder = Path(conceptree.cli.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "options.py", "explain.py", "runs.py", "index.py",
                                          "evaluate.py"}
    found = {}
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in FORBIDDEN]
            if bad:
                found.setdefault(module.name, []).extend(bad)
    assert found == {}


def test_evaluation_files_a_user_can_fix_raise_input_error(tmp_path):
    """A stale or corrupt cache file and a missing results.json are the user's to fix, not bugs."""
    from conceptree.errors import InputError
    from conceptree.evaluation.image_maps import ImageMaps
    from conceptree.evaluation.outputs import load_results

    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read cached maps .*junk.npz.*delete it to recompute"):
        ImageMaps.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "old.npz", version=np.array(-1))
    with pytest.raises(InputError, match="from cache version -1.*delete it"):
        ImageMaps.load(tmp_path / "old.npz")
    with pytest.raises(InputError, match="results.json not found; run conceptree evaluate first"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(InputError, match="cannot read .*results.json"):
        load_results(tmp_path)
