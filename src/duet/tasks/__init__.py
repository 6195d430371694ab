"""The tasks: each a folder with a `Task` (duet.task) and the one dict below.

    tasks/recommendation/   click-through records grouped by event: SASRec / GRU4Rec / DIN
    tasks/images/           an image fleet: per-device shift, CNN static part
    tasks/sensors/          phone sensors (UCI HAPT), one device per user, 1-D CNN static part
    tasks/own/              a user's own static module, head, loss and metric (no entry: see its docs)

Every dataset, run and bundle records its task's name and builder (`package.module:function`);
the core imports the builder (duet.task.load_task) and never names a task. Adding a task is a
folder and one entry in TASKS. A user's own task needs no entry: its builder is recorded.
"""

from __future__ import annotations

from pathlib import Path

from duet.errors import DuetError
from duet.task import Task, load_task, task_of
from duet.tasks import images, recommendation, sensors

# Task name -> its builder. The first is the default of `duet prepare`.
TASKS: dict[str, str] = {
    recommendation.NAME: recommendation.BUILDER,
    images.NAME: images.BUILDER,
    sensors.NAME: sensors.BUILDER,
}
# Task name -> its own `duet train` options (a pydantic model), for the tasks that have some; from the
# task's package, so that the command line builds its flags without importing the task's code.
TASK_OPTIONS = {package.NAME: package.TRAIN_OPTIONS for package in (recommendation, images, sensors)
                if getattr(package, "TRAIN_OPTIONS", None) is not None}


def task_named(name: str) -> Task:
    """The built-in task called `name` (one line naming the choices otherwise)."""
    if name not in TASKS:
        raise DuetError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return load_task(TASKS[name])


def dataset_task(path: str | Path) -> Task:
    """The task a prepared dataset records in its manifest."""
    from duet.manifest import read_any_manifest

    return task_of(read_any_manifest(path, "duet dataset (run `duet prepare`)", ("task",)),
                   Path(path) / "manifest.json")


def source_task(source: str) -> Task:
    """The task whose `duet prepare` source is `source`."""
    for name in TASKS:
        task = task_named(name)
        if source in task.sources:
            return task
    choices = [s for name in TASKS for s in task_named(name).sources]
    raise DuetError(f"--source: unknown {source!r}; choose one of {', '.join(choices)}")
