"""Bring your own model: a duet task from any static module, any head module, a loss and a metric.

    from duet.tasks.own import OwnTask, write_dataset, compare_with_global

    def build_task() -> OwnTask:          # in an importable module, e.g. mypackage/keyboard.py
        return OwnTask(name="keyboard", builder="mypackage.keyboard:build_task",
                       static=lambda: MyEncoder(), head=lambda: nn.Linear(32, 10),
                       loss_fn=F.cross_entropy, metric=accuracy, metric_name="accuracy")

    write_dataset("data/keyboard", build_task(), x, y, device, order)   # arrays -> a dataset
    compare_with_global("data/keyboard", "reports/keyboard", seeds=3)   # base, DUET, intervals

Then `duet train`, `duet evaluate`, `duet export`, `duet serve` and `duet simulate` work on its
datasets and runs as on any other task (the recorded builder rebuilds the modules).
`examples/own_model.py` runs all of it.
"""

from duet.tasks.own.data import write_dataset
from duet.tasks.own.task import OwnDeviceModel, OwnTask
from duet.tasks.own.workflow import compare_with_global, train_runs

__all__ = ["OwnDeviceModel", "OwnTask", "compare_with_global", "train_runs", "write_dataset"]
