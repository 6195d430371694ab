"""`make results-check`: the docs' figures are those the committed result files give, and a
changed number in any of those files fails the check, naming the figure."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("results_check", ROOT / "scripts" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


results = _checker()


def _copy_tree(tmp: Path) -> Path:
    """The docs and the committed result files, nothing else: what the check reads."""
    for doc in results.documents(ROOT):
        (tmp / doc.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(doc, tmp / doc.relative_to(ROOT))
    for folder in ("docs/results", "benchmarks/results"):
        shutil.copytree(ROOT / folder, tmp / folder, ignore=shutil.ignore_patterns("*.png"))
    return tmp


def _perturb(path: Path, keys: list, scale: float = 1.5) -> None:
    data = json.loads(path.read_text())
    node = data
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = node[keys[-1]] * scale
    path.write_text(json.dumps(data))


def test_the_committed_docs_pass(capsys):
    assert results.main(["--check", "--root", str(ROOT)]) == 0
    blocks, figures = results.count(ROOT)
    assert blocks >= 10 and figures >= 100
    assert "0 differ" in capsys.readouterr().out


@pytest.mark.parametrize(("rel", "keys", "figure"), [
    # a bootstrap bound behind an inline figure (README's quick demo)
    ("docs/results/quick/results.json", ["summary", "sasrec", "differences", "duet - base", "lo"],
     "quick|differences/duet - base/boot"),
    # one seed's accuracy behind the digits table (a block: ddof-1 std recomputed from the seeds)
    ("docs/results/digits/results.json", ["seeds", "1", "metrics", "tent", "accuracy_unseen"], "block digits-table"),
    # one user's AUC in one seed: moves the seed-level interval of the reference table
    ("docs/results/reference-din/results.json", ["runs", "din", "seed2", "duet", "user_auc", "1"],
     "block reference-table"),
    # the transcribed published-code record
    ("docs/results/published_code_anchor.json", ["user_auc", "popularity"], "published_code_anchor.json"),
    # a performance figure
    ("benchmarks/results/bulk_generate.json", ["alone", "devices_per_s", "folded"], "bulk_generate.json"),
])
def test_a_changed_number_fails_naming_the_figure(tmp_path, capsys, rel, keys, figure):
    root = _copy_tree(tmp_path)
    assert results.main(["--check", "--root", str(root)]) == 0
    _perturb(root / rel, keys)
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert figure in err
    assert any(line.split(":")[0].endswith(".md") and line.split(":")[1].isdigit() for line in err.splitlines())


def test_rewrite_then_check_passes_and_is_atomic(tmp_path):
    root = _copy_tree(tmp_path)
    _perturb(root / "docs/results/compressed_device.json", ["test_uauc", "DUET"], 1.01)
    assert results.main(["--check", "--root", str(root)]) == 1
    assert results.main(["--root", str(root)]) == 0
    assert results.main(["--check", "--root", str(root)]) == 0
    assert not list((root / "docs").glob(".*.md.*"))  # no temp file left behind


def test_an_unknown_block_or_key_is_an_error(tmp_path):
    root = _copy_tree(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- figures:nope -->\n<!-- /figures:nope -->\n"
                      "<!--f docs/results/scale.json|missing|.2f-->1<!--/f-->\n")
    assert results.main(["--root", str(root)]) == 1
    assert results.main(["--check", "--root", str(root)]) == 1


def test_formats():
    assert results.format_value({"mean": 0.03, "lo": -0.0084, "hi": 0.0479}, "ci+.2f*100") == "+3.00 [-0.84, +4.79]"
    assert results.format_value({"mean": 0.9068, "std": 0.0172}, "ms.4f") == "0.9068 ± 0.0172"
    assert results.format_value(50901, ",d") == "50,901"
    assert results.mean_std([1.0, 2.0, 3.0])["std"] == 1.0  # ddof 1
