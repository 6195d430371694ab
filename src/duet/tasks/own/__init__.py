"""Bring your own model: a duet task from any static module, any head module, a loss and a metric.

    from duet.tasks.own import OwnTask, write_dataset, compare_with_global

    def build_task(keys: int = 30) -> OwnTask:   # in an importable module, e.g. mypackage/keyboard.py
        return OwnTask(name="keyboard", builder="mypackage.keyboard:build_task",
                       static=lambda: MyEncoder(keys), head=lambda: nn.Linear(32, 10),
                       loss_fn=F.cross_entropy, metric=accuracy, metric_name="accuracy",
                       columns=(Column.code(keys), Column(0.0, 1.0)))   # optional: what a sample holds

    write_dataset("data/keyboard", build_task(keys=40), x, y, device, order,   # arrays -> a dataset
                  unseen=0.2, builder_options={"keys": 40})                  # 20% of devices held out
    compare_with_global("data/keyboard", "reports/keyboard", seeds=3)   # base, DUET, intervals

Then `duet train`, `duet evaluate`, `duet export`, `duet serve` and `duet simulate` work on its
datasets and runs as on any other task (the recorded builder rebuilds the modules). Float labels
make a regression (the loss and metric say how; `higher_is_better=False` for an error).
`examples/own_model.py` and `examples/flights.py` run all of it; docs/guides/own-data.md is the guide.
"""

from duet.spec import Column, SampleSpec
from duet.tasks.own.data import write_dataset
from duet.tasks.own.task import OwnDeviceModel, OwnTask
from duet.tasks.own.workflow import compare_with_global, train_runs

__all__ = ["Column", "OwnDeviceModel", "OwnTask", "SampleSpec", "compare_with_global", "train_runs",
           "write_dataset"]
