"""`make results-check`: the docs' figures are those the committed result files give; a changed
number in any of those files, a figure outside a marker, or a stored summary that the committed
raw values contradict fails the check, naming the figure."""

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
        shutil.copytree(ROOT / folder, tmp / folder, ignore=shutil.ignore_patterns("*.png"), dirs_exist_ok=True)
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
    # one user's AUC behind a recomputed bootstrap interval (the quick demo's, an inline figure)
    ("docs/results/quick/results.json", ["runs", "sasrec", "seed0", "duet", "user_auc", "7"],
     "quick|differences/duet - base/boot"),
    # one seed's accuracy behind the digits table (a block: ddof-1 std recomputed from the seeds)
    ("docs/results/digits/results.json", ["seeds", "1", "metrics", "tent", "accuracy_unseen"], "block digits-table"),
    # one user's AUC in one seed: moves the seed-level interval of the reference table
    ("docs/results/reference-din/results.json", ["runs", "din", "seed2", "duet", "user_auc", "1"],
     "block reference-table"),
    # the transcribed published-code record
    ("docs/results/published_code_anchor.json", ["user_auc", "popularity"], "published_code_anchor.json"),
    # one seed's overall AUC behind the MovieLens-100K table (mean ± std over seeds recomputed)
    ("docs/results/ml-100k/results.json", ["runs", "din", "seed3", "base", "test", "auc"], "block ml100k-table"),
    # a published figure the table sets beside duet's
    ("docs/results/ml-100k/published.json", ["reproduction", "sasrec", "duet"], "block ml100k-table"),
    # a performance figure (a block on the performance page)
    ("benchmarks/results/bulk_generate.json", ["alone", "devices_per_s", "folded"], "block bulk-table"),
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


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_a_new_unmarked_figure_fails_naming_file_line_and_text(tmp_path, capsys):
    root = _copy_tree(tmp_path)
    page = root / "docs" / "results" / "images.md"
    _append(page, "\nDUET closes 27 % of the gap, at 0.91 accuracy and 1,234.5 devices/s (2.0x).\n")
    line = page.read_text().count("\n")
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    for figure in ("27 %", "0.91", "1,234.5", "2.0"):
        assert f"docs/results/images.md:{line}: figure {figure!r} outside a marker" in err
    assert "DUET closes 27 %" in err


def test_a_changed_marked_figure_fails_closes_8_to_18_percent(tmp_path, capsys):
    root = _copy_tree(tmp_path)
    page = root / "docs" / "results" / "index.md"
    text = page.read_text()
    marked = "<!--f shift_gap|duet/mean|.0%-->8%<!--/f-->"
    assert marked in text  # the synthetic-drift share, backed by the committed manifest and report
    page.write_text(text.replace(marked, marked.replace("-->8%", "-->18%")))
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "docs/results/index.md:" in err and "'18%' should be '8%'" in err
    # and the same claim made outside a marker fails too
    page.write_text(text + "\nDUET closes 18% of the gap.\n")
    assert results.main(["--check", "--root", str(root)]) == 1
    assert "figure '18%' outside a marker" in capsys.readouterr().err


def test_a_tampered_stored_interval_fails_naming_its_key(tmp_path, capsys):
    """The bootstrap interval is recomputed from the per-user AUCs: a stored bound that differs fails
    even though no page quotes the stored number (the pages show the recomputed one)."""
    root = _copy_tree(tmp_path)
    rel = "docs/results/reference-sasrec/results.json"
    _perturb(root / rel, ["summary", "sasrec", "differences", "duet - base", "lo"], 0.5)
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{rel}: error: {rel}/summary/sasrec/differences/duet - base/lo: stored" in err
    assert "the raw values give" in err
    assert ".md:" not in err  # every page still shows what the raw values give


def test_a_tampered_digits_interval_and_seed_level_interval_fail(tmp_path, capsys):
    root = _copy_tree(tmp_path)
    rel = "docs/results/digits/results.json"
    _perturb(root / rel, ["summary", "differences", "duet - global (unseen)", "seed_level", "hi"], 1.2)
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 1
    assert "differences/duet - global (unseen)/seed_level/hi: stored" in capsys.readouterr().err


def test_allow_listed_versions_settings_and_code_pass(tmp_path, capsys):
    root = _copy_tree(tmp_path)
    _append(root / "README.md", "\nNeeds Python 3.12 and torch 2.13.0 (a version of three parts); every interval is a\n"
            "95% paired bootstrap interval; `--ratios 0.8,0.1,0.1` and `lr=3e-3` are settings.\n\n"
            "```bash\nduet prepare --cutoff-quantile 0.7\n```\n")
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 0, capsys.readouterr().err


def test_an_output_sample_in_a_plain_fence_is_checked(tmp_path, capsys):
    """A fence without a command language shows output: a measured figure there is a figure."""
    root = _copy_tree(tmp_path)
    _append(root / "README.md", "\n```\ntest uauc 0.8535\n```\n")
    capsys.readouterr()
    assert results.main(["--check", "--root", str(root)]) == 1
    assert "figure '0.8535' outside a marker" in capsys.readouterr().err


def test_the_checked_pages_are_the_sites_pages():
    """scripts/results.py checks README.md and exactly the pages mkdocs builds (reports excluded)."""
    from mkdocs.config import load_config
    from mkdocs.structure.files import get_files

    files = get_files(load_config(str(ROOT / "mkdocs.yml")))
    built = {f"docs/{f.src_uri}" for f in files.documentation_pages()}
    checked = {str(p.relative_to(ROOT)) for p in results.documents(ROOT)} - {"README.md"}
    assert built == checked


def test_the_ml100k_table_says_where_duet_is_below_a_published_figure(tmp_path):
    """The table's verdict column is computed, not written: a published figure above duet's mean
    turns its cell into 'below'; each cell's minutes add the base run to the method's own steps."""
    root = _copy_tree(tmp_path)
    published = root / "docs/results/ml-100k/published.json"
    data = json.loads(published.read_text())
    data["paper"]["gru4rec"]["duet"] = 0.99
    published.write_text(json.dumps(data))
    rendered = results.ml100k_table(root)
    row = next(line for line in rendered.splitlines() if line.startswith("| GRU4Rec | DUET |"))
    assert "below the paper, at or above the reproduction" in row
    assert "| DIN | DUET |" in rendered and "below" not in rendered.replace(row, "")
    wall = {"base": 60.0, "finetune-choice": 30.0, "finetune": 30.0, "duet/a": 60.0, "duet-noswa/a": 600.0}
    assert results._cell_minutes(wall, "base") == 1.0
    assert results._cell_minutes(wall, "finetune") == 2.0
    assert results._cell_minutes(wall, "duet") == 2.0  # stage 2 with SWA only, not the no-SWA ablation


def test_the_ml100k_plot_draws_the_committed_cells(tmp_path, capsys):
    """experiments/ml100k_plot.py reads the same committed files as the table: the same cells and
    means, a PNG written whole, and one line (no traceback) when the results are missing."""
    spec = importlib.util.spec_from_file_location("ml100k_plot", ROOT / "experiments" / "ml100k_plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    out = tmp_path / "table.png"
    plot.main(["--out", str(out), "--results", str(ROOT / "docs/results/ml-100k/results.json"),
               "--published", str(ROOT / "docs/results/ml-100k/published.json")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp.png"))
    raw = json.loads((ROOT / "docs/results/ml-100k/results.json").read_text())
    rows = {row["label"]: row for row in plot.cells(raw, json.loads((ROOT / "docs/results/ml-100k/published.json").read_text()))}
    table = results.ml100k(ROOT)
    assert rows["DIN DUET"]["mean"] == pytest.approx(table["din"]["metrics"]["duet"]["auc"]["mean"])
    assert rows["SASRec fine-tune"]["paper"] is None and rows["GRU4Rec base"]["reproduction"] == 0.9060
    with pytest.raises(SystemExit):
        plot.main(["--results", str(tmp_path / "missing.json"), "--out", str(out)])
    assert "missing.json: no such file" in capsys.readouterr().err
