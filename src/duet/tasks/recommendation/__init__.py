"""Sequential recommendation: click-through records grouped by event, SASRec / GRU4Rec / DIN static
parts, uauc selected on validation, fine-tuning and the popularity baseline, `duet compare`."""

from duet.tasks.recommendation.options import TrainOptions

NAME = "recommendation"
BUILDER = "duet.tasks.recommendation.task:task"  # recorded in every dataset, run and bundle of the task
TRAIN_OPTIONS = TrainOptions  # its own `duet train` options (the flags of recommendation datasets)
