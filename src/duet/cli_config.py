"""Turn CLI options into one validated RunConfig (every flag lands in the config).

The flags of `duet train` are derived from the config models: every field of ModelConfig,
GeneratorConfig and TrainConfig is a flag of its name (three renamed: `RENAMED`), typed as the
field, with the field's description as its help. A task's own training options (its `options`
model, e.g. recommendation's sampled negatives) are flags too, shown in that task's panel of the
help; given for another task's dataset, they are refused in one line, and a run records only its
own task's options.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from duet.config import GeneratorConfig, ModelConfig, RunConfig, TrainConfig
from duet.errors import DuetError

SECTIONS: dict[str, type[BaseModel]] = {"model": ModelConfig, "generator": GeneratorConfig, "train": TrainConfig}
# Flags named otherwise than their field (the generator's dropout beside the model's; --init).
RENAMED = {("generator", "hidden_dim"): "gen_hidden", ("generator", "dropout"): "gen_dropout",
           ("train", "init_run"): "init"}
FIRST = (("model", "backbone"), ("train", "method"))  # shown first in the help


@dataclass(frozen=True)
class Flag:
    """A flag of `duet train`: the config field it sets (`section` is model, generator, train or options)."""

    name: str
    section: str
    field: str
    kind: Any  # the option's Python type
    help: str
    tasks: tuple[str, ...] = ()  # a task option: the tasks that take it

    @property
    def spelled(self) -> str:
        return "--" + self.name.replace("_", "-")


def _kind(annotation: Any) -> Any:
    """The CLI type of a field: X for X | None, str for a Literal or a tuple (written comma-separated)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if typing.get_origin(annotation) in (Literal, tuple) or annotation is str:
        return str
    return annotation


def _help(info: Any) -> str:
    text = info.description or ""
    default = info.default
    if "default" not in text and not (default is None or default is False or default is PydanticUndefined):
        text += f" (default: {default})"
    return text


def train_flags() -> list[Flag]:
    """Every flag `duet train` takes beside --data, --out, --resume and --progress, in help order."""
    from duet.tasks import TASK_OPTIONS

    order = ("train", "model", "generator")
    fields = [(section, name, info) for section in order for name, info in SECTIONS[section].model_fields.items()]
    fields.sort(key=lambda f: FIRST.index(f[:2]) if f[:2] in FIRST else len(FIRST))
    flags = [Flag(RENAMED.get((section, name), name), section, name, _kind(info.annotation), _help(info))
             for section, name, info in fields]
    owners: dict[str, list[str]] = {}
    for task, options in TASK_OPTIONS.items():
        for name in options.model_fields:
            owners.setdefault(name, []).append(task)
    for name, tasks in owners.items():
        info = TASK_OPTIONS[tasks[0]].model_fields[name]
        flags.append(Flag(name, "options", name, _kind(info.annotation), _help(info), tuple(tasks)))
    return flags


def train_parameters() -> list[inspect.Parameter]:
    """The typer parameters of the flags (each None when not given: the config's default applies)."""
    import typer

    params = []
    for flag in train_flags():
        panel = f"Options of {' and '.join(flag.tasks)} datasets" if flag.tasks else None
        option = typer.Option(help=flag.help, rich_help_panel=panel, show_default=False)
        params.append(inspect.Parameter(flag.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=Annotated[flag.kind | None, option]))
    return params


def _ints(text: str, flag: str) -> tuple[int, ...] | None:
    if not text.strip():
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise DuetError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _value(flag: Flag, value: Any) -> Any:
    if flag.section == "model" and flag.field == "head_hidden":
        return _ints(value, flag.spelled)
    return str(value) if isinstance(value, Path) else value


def train_config(data: Path, given: dict[str, Any]) -> RunConfig:
    """Validate every option given (not None); a bad value is a one-line DuetError naming the option.

    The dataset says its task; options left unset take that task's defaults (backbone, encoder,
    batch size) or the config's."""
    from duet.task import task_options
    from duet.tasks import dataset_task
    from duet.training.loop import run_config_for

    task = dataset_task(data)
    values: dict[str, dict[str, Any]] = {"model": {}, "generator": {}, "train": {}, "options": {}}
    flags = {flag.field if flag.section == "options" else (flag.section, flag.field): flag for flag in train_flags()}
    for flag in flags.values():
        value = given.get(flag.name)
        if value is None:
            continue
        if flag.tasks and (task.options is None or flag.field not in task.options.model_fields):
            raise DuetError(f"{flag.spelled}: an option of {' and '.join(flag.tasks)} datasets; {data} is a "
                            f"{task.name} dataset")
        values[flag.section][flag.field] = _value(flag, value)
    backbone = values["model"].setdefault("backbone", task.backbones[0])
    if backbone not in task.backbones:
        raise DuetError(f"--backbone: {backbone!r} is not a static part of the {task.name} task; choose one of "
                        f"{', '.join(task.backbones)}")
    method = values["train"].setdefault("method", "base")
    if method not in task.methods:
        raise DuetError(f"--method: {method!r} is not a method of the {task.name} task; choose one of "
                        f"{', '.join(task.methods)}")
    values["generator"].setdefault("encoder", task.defaults.get("encoder", "mean"))
    values["train"].setdefault("batch_size", task.defaults.get("batch_size", 128))
    try:
        sections = {name: model.model_validate(values[name]) for name, model in SECTIONS.items()}
    except ValidationError as exc:
        err = exc.errors()[0]
        section = next(name for name, model in SECTIONS.items() if model.__name__ == exc.title)
        field = str(err["loc"][0]) if err["loc"] else ""
        spelled = flags[(section, field)].spelled if (section, field) in flags else "option"
        raise DuetError(f"{spelled}: {err['msg']} (got {err.get('input')!r})") from None
    config = run_config_for(data, task, model=sections["model"], train=sections["train"],
                            generator=sections["generator"] if method == "duet" else None, options=values["options"])
    task_options(task, config)  # the task's own options, validated by its model
    task.build(config)  # a model its task cannot build is a one-line error before anything is written
    return config
