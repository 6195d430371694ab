"""Every `duet train` flag lands in the run's config; bad options are one-line errors."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from duet.cli import app
from duet.cli_config import train_config

runner = CliRunner()

DEFAULTS = dict(
    backbone="sasrec", method="base", epochs=30, batch_size=1024, lr=1e-3, weight_decay=0.0, clip_norm=5.0,
    patience=3, seed=0, threads=None, embed_dim=32, num_blocks=2, num_heads=1, dropout=0.2, head_hidden=None,
    activation="tanh", encoder="gru", gen_hidden=32, layer_embed_dim=16, decoder_hidden=32, rank=None,
    mode="residual", gen_dropout=0.3, num_generators=3, temperature=1.0, freeze_static=False, init=None,
)
CHANGED = dict(
    backbone="din", epochs=7, batch_size=64, lr=0.01, weight_decay=0.1, clip_norm=1.0, patience=9, seed=4,
    threads=1, embed_dim=8, num_blocks=3, num_heads=2, dropout=0.0, head_hidden="16,8", activation="relu",
    encoder="attention", gen_hidden=12, layer_embed_dim=6, decoder_hidden=10, rank=2, mode="paper", gen_dropout=0.1,
    num_generators=5, temperature=2.5, freeze_static=True, init="some/run",
)


def test_defaults_match_the_cli_signature():
    from duet.cli import train

    params = inspect.signature(train).parameters
    for name, value in DEFAULTS.items():
        assert params[name].default == value, name


@pytest.mark.parametrize("flag", sorted(CHANGED))
def test_every_flag_changes_the_config(tiny_dir, flag):
    base = train_config(data=tiny_dir, **{**DEFAULTS, "method": "duet"})
    changed = train_config(data=tiny_dir, **{**DEFAULTS, "method": "duet", flag: CHANGED[flag]})
    assert changed != base


def test_method_flag_changes_the_config(tiny_dir):
    assert train_config(data=tiny_dir, **DEFAULTS) != train_config(data=tiny_dir, **{**DEFAULTS, "method": "pop"})


def test_help_on_every_command():
    for command in ("prepare", "train", "evaluate", "finetune", "compare", "generate", "export-text"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output


@pytest.mark.parametrize("args, message", [
    (["--backbone", "bert4rec"], "--backbone: unknown 'bert4rec'"),
    (["--method", "magic"], "--method"),
    (["--lr", "-1"], "--lr"),
    (["--head-hidden", "3,x"], "--head-hidden"),
])
def test_bad_train_options_are_one_line_errors(tiny_dir, tmp_path, args, message):
    result = runner.invoke(app, ["train", "--data", str(tiny_dir), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


def test_missing_dataset_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "not a duet dataset" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_compare_options_left_out_keep_the_config_defaults(tiny_dir, tmp_path, monkeypatch):
    import duet.report.compare as compare_module
    from duet.report.compare import CompareConfig, DuetVariant, quick_config

    seen = []
    monkeypatch.setattr(compare_module, "compare", lambda cfg, *_args, **_kwargs: seen.append(cfg) or {})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.md").write_text("# report\n")
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "results.md").write_text("# report\n")
    for out, extra in (("full", []), ("quick", ["--quick"])):
        result = runner.invoke(app, ["compare", "--data", str(tiny_dir), "--out", str(tmp_path / out), "--overwrite",
                                     "--no-progress", *extra])
        assert result.exit_code == 0, result.output
    assert seen[0] == CompareConfig(data=str(tiny_dir))
    assert seen[1] == quick_config(str(tiny_dir))
    runner.invoke(app, ["compare", "--data", str(tiny_dir), "--out", str(tmp_path / "full"), "--overwrite",
                        "--variants", "frozen-rank2-dropout0.1", "--seeds", "2", "--backbones", "din", "--epochs", "3"])
    assert (seen[2].seeds, seen[2].backbones, seen[2].epochs, seen[2].backbone_epochs) == (2, ("din",), 3, {})
    assert seen[2].duet_variants == (DuetVariant(freeze_static=True, rank=2, dropout=0.1),)
    result = runner.invoke(app, ["compare", "--data", str(tiny_dir), "--out", str(tmp_path / "full"), "--overwrite",
                                 "--variants", "frozen-rank-2"])
    assert result.exit_code == 2 and "frozen-rank-2" in result.stderr and len(seen) == 3


def test_a_missing_extra_is_a_one_line_hint(capsys: pytest.CaptureFixture) -> None:
    import typer

    from duet.cli import user_errors

    @user_errors
    def command(missing: str) -> None:
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    with pytest.raises(typer.Exit) as exit_:
        command("fastapi")  # e.g. `duet serve` on a training-only install
    assert exit_.value.exit_code == 2
    assert capsys.readouterr().err.strip() == ("error: this command needs fastapi: install duet's serve extra "
                                               "(in a checkout: pip install '.[serve]')")
    with pytest.raises(ModuleNotFoundError):  # not an extra of ours: a real bug, with its traceback
        command("duet.nonexistent")
