"""Every flag of `duet train`, `finetune` and `compare` lands in exactly its own field; bad input is a
one-line error with exit code 2, in process and through the real `duet` entry point."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from conftest import NUM_ITEMS
from pydantic import BaseModel
from typer.testing import CliRunner

from duet.cli import app
from duet.config import SCRATCH_SCHEDULE

runner = CliRunner()


def one_line(stderr: str) -> str:
    """The CLI's answer to a user mistake: one line `error: ...` on stderr, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------- every flag lands in exactly its field

def changes(before: object, after: object, path: str) -> dict[str, object]:
    """{dotted field path: new value} of every leaf that differs (a section that became None is one leaf)."""
    if isinstance(before, BaseModel) and type(before) is type(after):
        found: dict[str, object] = {}
        for name in type(before).model_fields:
            found.update(changes(getattr(before, name), getattr(after, name), f"{path}.{name}"))
        return found
    return {} if before == after else {path: after}


def leaf(received: dict[str, object], path: str) -> object:
    head, *rest = path.split(".")
    value = received[head]
    for name in rest:
        value = getattr(value, name)
    return value


def fields(model: BaseModel, **call: object) -> dict[str, object]:
    """What the library call received: the config's top-level fields plus the call's other arguments."""
    return {name: getattr(model, name) for name in type(model).model_fields} | call


@dataclass
class Command:
    """A CLI command, the library function it hands its options to, and where each flag must land."""

    name: str
    module: str
    function: str
    fake: Callable[[list], Callable]  # (list of received calls) -> stand-in for the library function
    flags: Callable[[Path], dict[str, tuple[object, dict[str, object]]]]  # tmp -> {flag: (value, landed)}
    required: Callable[[Path, Path], dict[str, object]]  # (data, tmp) -> the options every call needs
    defaults: Callable[[Path, Path], dict[str, object]]  # what the call receives with only those
    reset: Callable[[Path], None] = field(default=lambda _tmp: None)  # before each call

    def invoke(self, monkeypatch: pytest.MonkeyPatch, tmp: Path, options: dict[str, object]) -> dict[str, object]:
        """Run the command with `options` ({flag name: value}); return what the library function received."""
        received: list[dict] = []
        monkeypatch.setattr(importlib.import_module(self.module), self.function, self.fake(received))
        params = {p.name: p for p in typer.main.get_command(app).commands[self.name].params}
        argv = [self.name]
        for name, value in options.items():
            param = params[name]
            if param.is_flag:
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            else:
                argv += [param.opts[0], str(value)]
        self.reset(tmp)
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        (call,) = received
        return call


def _train_fake(received: list) -> Callable:
    def train(config, out, resume=False, progress=True):
        received.append(fields(config, out=out, resume=resume, progress=progress))
        return {"best_epoch": 0, "valid": {}}

    return train


def _finetune_fake(received: list) -> Callable:
    def finetune(cfg, out=None, progress=True):
        received.append(fields(cfg, out=out, progress=progress))
        return {"metrics": {}, "devices": 0}

    return finetune


def _compare_fake(received: list) -> Callable:
    def compare(cfg, out, progress=True, only_seeds=None):
        received.append(fields(cfg, out=out, progress=progress, only_seeds=only_seeds))
        out.mkdir(parents=True)
        (out / "results.md").write_text("# report\n")  # the CLI prints it

    return compare


def _train_defaults(data: Path, tmp: Path) -> dict[str, object]:
    from duet.config import GeneratorConfig, ModelConfig, TrainConfig
    from duet.training.loop import run_config_for

    config = run_config_for(data, model=ModelConfig(), generator=GeneratorConfig(), train=TrainConfig(method="duet"))
    return fields(config, out=tmp / "out", resume=False, progress=True)


def _finetune_defaults(data: Path, _tmp: Path) -> dict[str, object]:
    from duet.tasks.recommendation.finetune import FinetuneConfig

    return fields(FinetuneConfig(base_run="base/run", data=str(data)), out=None, progress=True)


def _compare_defaults(data: Path, tmp: Path) -> dict[str, object]:
    from duet.tasks.recommendation.report.compare import CompareConfig

    return fields(CompareConfig(data=str(data)), out=tmp / "out", progress=True, only_seeds=None)


def _quick(data: Path) -> dict[str, object]:
    from duet.tasks.recommendation.report.compare import CompareConfig, quick_config

    full, quick = CompareConfig(data=str(data)), quick_config(str(data))
    return {name: getattr(quick, name) for name in type(full).model_fields if getattr(full, name) != getattr(quick, name)}


def _variant() -> tuple:
    from duet.tasks.recommendation.report.compare import DuetVariant

    return (DuetVariant(freeze_static=True, rank=2, dropout=0.1),)


def _device_model() -> object:
    from duet.tasks.recommendation.report.compressed import CompressedDevice

    return CompressedDevice(history=5, dim=16)


def _remove_outs(tmp: Path) -> None:
    for name in ("out", "out2"):
        shutil.rmtree(tmp / name, ignore_errors=True)


# Values differ from every default; a flag that sets no field of the call says so with {}.
SCRATCH = {f"train.{k}": v for k, v in SCRATCH_SCHEDULE.items()}  # != the stage-2 baseline's

COMMANDS = {
    "train": Command(
        "train", "duet.training.loop", "train", _train_fake,
        # The baseline is a DUET run: with --method base the generator section is None and its flags land nowhere.
        required=lambda data, tmp: {"data": data, "out": tmp / "out", "method": "duet"},
        defaults=_train_defaults,
        flags=lambda tmp: {
            "data": (tmp / "data2", {"data": str((tmp / "data2").resolve())}),
            "out": (tmp / "out2", {"out": tmp / "out2"}),
            "backbone": ("din", {"model.backbone": "din"}),
            # a model trained from scratch takes the scratch schedule (config.SCRATCH_SCHEDULE)
            "method": ("base", {"train.method": "base", "generator": None, **SCRATCH}),
            "resume": (True, {"resume": True}),
            "epochs": (17, {"train.epochs": 17}),
            "batch_size": (64, {"train.batch_size": 64}),
            "lr": (0.0123, {"train.lr": 0.0123}),
            "weight_decay": (0.1, {"train.weight_decay": 0.1}),
            "clip_norm": (1.5, {"train.clip_norm": 1.5}),
            "patience": (11, {"train.patience": 11}),
            "lr_schedule": ("plateau", {"train.lr_schedule": "plateau"}),
            "lr_decay": (0.25, {"train.lr_decay": 0.25}),
            "sampled_negatives": (3, {"options": {"sampled_negatives": 3}}),  # the recommendation task's own
            "eval_batch_size": (512, {"train.eval_batch_size": 512}),
            "chunk_size": (64, {"generator.chunk_size": 64}),
            "seed": (4, {"train.seed": 4}),
            "threads": (1, {"train.threads": 1}),
            "device": ("auto", {"train.device": "auto"}),
            "embed_dim": (8, {"model.embed_dim": 8}),
            "num_blocks": (3, {"model.num_blocks": 3}),
            "device_history": (5, {"model.device_history": 5}),
            "num_heads": (2, {"model.num_heads": 2}),
            "dropout": (0.05, {"model.dropout": 0.05}),
            "head_hidden": ("16,8", {"model.head_hidden": (16, 8)}),
            "activation": ("relu", {"model.activation": "relu"}),
            "film": (True, {"model.film": True}),
            "encoder": ("attention", {"generator.encoder": "attention"}),
            "gen_hidden": (12, {"generator.hidden_dim": 12}),
            "layer_embed_dim": (6, {"generator.layer_embed_dim": 6}),
            "decoder_hidden": (10, {"generator.decoder_hidden": 10}),
            "rank": (2, {"generator.rank": 2}),
            "mode": ("paper", {"generator.mode": "paper"}),
            "gen_dropout": (0.15, {"generator.dropout": 0.15}),
            "num_generators": (5, {"generator.num_generators": 5}),
            "temperature": (2.5, {"generator.temperature": 2.5}),
            "freeze_static": (True, {"train.freeze_static": True}),
            "init": ("some/run", {"train.init_run": "some/run"}),
            "from_scratch": (True, {"train.from_scratch": True, **SCRATCH}),
            "progress": (False, {"progress": False}),
        },
    ),
    "finetune": Command(
        "finetune", "duet.tasks.recommendation.finetune", "finetune", _finetune_fake,
        required=lambda data, _tmp: {"data": data, "base": "base/run"},
        defaults=_finetune_defaults,
        flags=lambda tmp: {
            "data": (tmp / "data2", {"data": str(tmp / "data2")}),
            "base": ("other/run", {"base_run": "other/run"}),
            "out": (tmp / "out2", {"out": tmp / "out2"}),
            "split": ("valid", {"split": "valid"}),
            "steps": (3, {"steps": 3}),
            "lr": (0.0123, {"lr": 0.0123}),
            "scope": ("head", {"scope": "head"}),
            "batch_size": (32, {"batch_size": 32}),
            "max_devices": (5, {"max_devices": 5}),
            "seed": (7, {"seed": 7}),
            "progress": (False, {"progress": False}),
        },
    ),
    "compare": Command(
        "compare", "duet.tasks.recommendation.report.compare", "compare", _compare_fake,
        required=lambda data, tmp: {"data": data, "out": tmp / "out"},
        defaults=_compare_defaults,
        reset=_remove_outs,
        flags=lambda tmp: {
            "data": (tmp / "data2", {"data": str(tmp / "data2")}),
            "out": (tmp / "out2", {"out": tmp / "out2"}),
            "backbones": ("din,gru4rec", {"backbones": ("din", "gru4rec")}),
            "seeds": (2, {"seeds": 2}),
            "only_seeds": ("1", {"only_seeds": (1,)}),
            "quick": (True, _quick(tmp / "data")),
            # Any --epochs replaces the per-backbone caps too.
            "epochs": (3, {"epochs": 3}),
            "duet_epochs": (5, {"duet_epochs": 5}),
            "variants": ("frozen-rank2-dropout0.1", {"duet_variants": _variant()}),
            # steps given by hand: no validation grid over them
            "finetune_steps": (4, {"finetune_steps": 4, "finetune_grid": ()}),
            "finetune_scope": ("head", {"finetune_scope": "head"}),
            "scratch": (False, {"scratch": False}),
            "full_ranking_positives": (123, {"full_ranking_positives": 123}),
            "threads": (1, {"threads": 1}),
            "embed_dim": (16, {"embed_dim": 16}),
            "finetune_choice_devices": (7, {"finetune_choice_devices": 7}),
            "device_model": ("history=5,dim=16", {"device_model": _device_model()}),
            "overwrite": (True, {}),  # only lets an existing report be extended (checked below)
            "progress": (False, {"progress": False}),
        },
    ),
}


@pytest.fixture
def datasets(tiny_dir: Path, tmp_path: Path) -> Path:
    """tmp/data and tmp/data2: two copies of one dataset, so --data can move without changing its facts."""
    for name in ("data", "data2"):
        shutil.copytree(tiny_dir, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_is_in_the_table(name):
    """A new flag must be added to COMMANDS (and so be shown to land in its field)."""
    options = {p.name for p in typer.main.get_command(app).commands[name].params}
    assert options == set(COMMANDS[name].flags(Path("tmp")))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_flag_sets_exactly_its_field(name, datasets, monkeypatch):
    command, tmp = COMMANDS[name], datasets
    required = command.required(tmp / "data", tmp)
    baseline = command.invoke(monkeypatch, tmp, required)
    assert baseline == command.defaults(tmp / "data", tmp)  # flags left out keep the config defaults
    wrong = {}
    for flag, (value, expected) in command.flags(tmp).items():
        if "refused" in expected:
            with pytest.raises(AssertionError, match=re.escape(expected["refused"])):
                command.invoke(monkeypatch, tmp, {**required, flag: value})
            continue
        assert not expected or any(leaf(baseline, path) != want for path, want in expected.items()), \
            f"--{flag}: the table's value is the default; pick another"
        received = command.invoke(monkeypatch, tmp, {**required, flag: value})
        landed = {path: new for key in baseline for path, new in changes(baseline[key], received[key], key).items()}
        if landed != expected:
            wrong[flag] = landed
    assert wrong == {}, "flags that landed elsewhere (flag: what changed)"


def test_compare_refuses_an_existing_report_without_overwrite(datasets, monkeypatch):
    (datasets / "out").mkdir()
    (datasets / "out" / "results.md").write_text("# an earlier report\n")
    called = []
    monkeypatch.setattr("duet.tasks.recommendation.report.compare.compare", lambda *args, **_kwargs: called.append(args))
    argv = ["compare", "--data", str(datasets / "data"), "--out", str(datasets / "out")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "--overwrite" in one_line(result.stderr) and called == []
    result = runner.invoke(app, [*argv, "--overwrite", "--variants", "frozen-rank-2"])
    assert result.exit_code == 2 and "frozen-rank-2" in one_line(result.stderr) and called == []


# ---------------------------------------------------------------- bad input, in process

def test_help_on_every_command():
    for command in ("prepare", "train", "evaluate", "finetune", "compare", "generate", "export-text"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output


@pytest.mark.parametrize("args, message", [
    (["--backbone", "bert4rec"], "--backbone: 'bert4rec' is not a static part of the recommendation task"),
    (["--method", "magic"], "--method"),
    (["--lr", "-1"], "--lr"),
    (["--head-hidden", "3,x"], "--head-hidden"),
])
def test_bad_train_options_are_one_line_errors(tiny_dir, tmp_path, args, message):
    result = runner.invoke(app, ["train", "--data", str(tiny_dir), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert message in one_line(result.stderr)
    assert not (tmp_path / "r").exists()


def test_missing_dataset_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "not a duet dataset" in one_line(result.stderr)


# ---------------------------------------------------------------- user mistakes: in process, and the main ones
# through the real entry point

DUET = Path(sys.executable).parent / "duet"  # the console script `pip install` made: what a user runs

MISTAKES = [  # (arguments, message, also run as a `duet` process); {run}, {data}, {tmp} are filled in
    (["generate", "--run", "{run}", "--window", f"3,{NUM_ITEMS}"], f"--window: values must be in 1..{NUM_ITEMS - 1}",
     True),
    (["generate", "--run", "{run}", "--window", "3,x"], "--window: expected comma-separated integers", False),
    (["generate", "--run", "{tmp}/no-run", "--window", "3"], "not a finished duet run (no manifest.json)", False),
    (["generate", "--run", "{data}", "--window", "3"], "format 'duet-dataset/1', expected 'duet-run/1'", False),
    (["generate", "--run", "{run}/stage1", "--window", "3"], "a base run has no generator", False),
    (["evaluate", "--run", "{run}", "--split", "train"], "--split must be valid or test, got 'train'", True),
    (["evaluate", "--run", "{tmp}/no-run"], "not a finished duet run (no manifest.json)", False),
    (["finetune", "--data", "{tmp}/no-data", "--base", "{run}/stage1", "--out", "{tmp}/ft"], "not a duet dataset", True),
    (["finetune", "--data", "{data}", "--base", "{run}", "--out", "{tmp}/ft"], "fine-tuning starts from a base run",
     False),
    (["finetune", "--data", "{data}", "--base", "{run}/stage1", "--split", "train", "--out", "{tmp}/ft"], "--split",
     False),
    (["simulate", "--run", "{run}", "--dtype", "fp64"], "--dtype must be fp32 or fp16, got 'fp64'", True),
    (["simulate", "--run", "{run}", "--devices", "0"], "--devices must be at least 1, got 0", True),
]


@pytest.fixture
def unchanged(duet_run, tiny_data, tmp_path):
    """The fill-ins for MISTAKES; afterwards, checks that the run, the dataset and tmp_path are as they were."""
    before = {p: p.stat().st_mtime_ns for p in (*duet_run.rglob("*"), *tiny_data.rglob("*"))}
    yield {"run": duet_run, "data": tiny_data, "tmp": tmp_path}
    assert list(tmp_path.iterdir()) == []  # no --out was created
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize(("args", "message"), [(args, message) for args, message, _ in MISTAKES],
                         ids=[" ".join(args[:1] + args[-2:]) for args, _, _ in MISTAKES])
def test_user_mistakes_are_one_line_errors(unchanged, args, message):
    result = runner.invoke(app, [a.format(**unchanged) for a in args])
    assert result.exit_code == 2, result.output
    assert message in one_line(result.stderr) and result.stdout == ""


def test_main_user_mistakes_through_the_real_entry_point(unchanged):
    """Each in its own `duet` process: exit code 2, one line on stderr, nothing on stdout."""
    assert DUET.exists(), f"{DUET}: the `duet` console script is not installed (pip install -e .)"
    cases = [(args, message) for args, message, real in MISTAKES if real]
    assert {args[0] for args, _ in cases} == {"generate", "evaluate", "finetune", "simulate"}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(DUET), *(a.format(**unchanged) for a in args)], capture_output=True, text=True,
                              timeout=300)

    with ThreadPoolExecutor(2) as pool:  # each process spends most of its time importing torch
        results = list(pool.map(run, [args for args, _ in cases]))
    wrong = []
    for (args, message), result in zip(cases, results, strict=True):
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2 or result.stdout or len(lines) != 1 or not lines[0].startswith("error: ") \
                or message not in lines[0]:
            wrong.append((args, result.returncode, result.stdout[-300:], result.stderr[-600:]))
    assert wrong == []


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
