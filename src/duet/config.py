"""Typed configuration objects. One `RunConfig` per run, saved beside its results.

Unknown keys are an error (`extra="forbid"`), so a typo in a saved or hand-written
config fails loudly instead of being ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Method names: `base` and `duet` are trained by the shared loop; a task may add its own,
# trained by the loop too (`Task.gradient_methods`) or fitted without gradients
# (`Task.fit_without_gradients`, e.g. popularity).
GRADIENT_METHODS = ("base", "duet")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProtocolConfig(Strict):
    """How raw interactions become train/valid/test records."""

    min_user_interactions: int = Field(5, ge=1, description="k-core: users with fewer are dropped")
    min_item_interactions: int = Field(5, ge=1, description="k-core: items with fewer are dropped")
    history_len: int = Field(50, ge=1, description="click-history length L given to the backbone")
    window_len: int = Field(10, ge=1, description="real-time window length W given to the generator")
    # 0: the window is the W items right before the target (the history's tail); 1: the previous
    # step's window, without the most recent item (the published code's trigger sequence).
    window_lag: int = Field(0, ge=0, description="the window ends this many items before the target")
    train_negatives: int = Field(4, ge=0, description="negatives per train positive")
    # None = 4 for the ratio split, 99 for leave-one-out (the usual LOO protocol).
    eval_negatives: int | None = Field(None, ge=1, description="negatives per valid/test positive")
    split: Literal["ratio", "loo", "cutoff"] = "ratio"
    # Chronological per-user ratio of each user's targets: the cloud trains on the
    # first 80%, the device period is the last 10% (test) after 10% validation.
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # cutoff: a global time T at this quantile of all timestamps; train = targets
    # before T of the users who started before T; valid and test = every target of
    # the users who started at or after T (new devices), half of them each.
    cutoff_quantile: float = Field(0.7, gt=0.0, lt=1.0, description="cutoff split: T's quantile of timestamps")
    seed: int = 42

    @model_validator(mode="after")
    def _check_ratios(self) -> ProtocolConfig:
        if abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) <= 0:
            raise ValueError(f"ratios must be positive and sum to 1, got {self.ratios}")
        return self

    @property
    def eval_negatives_resolved(self) -> int:
        if self.eval_negatives is not None:
            return self.eval_negatives
        return 99 if self.split == "loo" else 4


class ModelConfig(Strict):
    """Static part (backbone) and dynamic head of the device model."""

    # The task's static part (its `backbones`; the task checks the name when it builds the model).
    backbone: str = Field("sasrec", min_length=1,
                          description="the static part, one of the dataset task's (default: its first)")
    embed_dim: int = Field(32, ge=2, description="width of the static part's features (item embeddings, CNN "
                                                  "features)")
    num_blocks: int = Field(2, ge=1, description="blocks of the static part, where it has a number of them "
                                                 "(attention blocks, GRU layers)")
    # A compressed device model: the static part reads only the last N items of the click
    # history (the cloud model reads all L of them; the generator still reads the dataset's
    # window W in the cloud). None = the whole history, the behaviour of every earlier run.
    device_history: int | None = Field(None, ge=1, description="a compressed device model, for a static part that "
                                       "reads a history: only its last N items (default: all; the generator still "
                                       "reads the window W)")
    num_heads: int = Field(1, ge=1, description="attention heads of the static part, where it has attention")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout rate of the static part")
    # Hidden widths of the dynamic head; None = backbone default: (embed_dim,) for
    # SASRec/GRU4Rec (two embed_dim x embed_dim layers, ~4 KB in fp16) and (32,)
    # for DIN's classifier (3*embed_dim -> 32 -> 1).
    head_hidden: tuple[int, ...] | None = Field(None, description="dynamic head hidden widths, e.g. 32 or 64,32 "
                                                "(default: the static part's)")
    activation: Literal["tanh", "relu"] = Field("tanh", description="head activation: tanh | relu")
    # FiLM / CaSE: a per-channel scale and shift after each conv block of the static part, also
    # generated from the window (the static part itself adapts, e.g. to a noisy or rotated input).
    film: bool = Field(False, description="also generate a per-channel scale and shift inside the static part "
                       "(FiLM): image and sensor CNN blocks, SASRec blocks, GRU4Rec and DIN history embeddings, an "
                       "own task's film_layers")


class GeneratorConfig(Strict):
    """PPG (hypernetwork) and SWA (ensemble of decoders)."""

    # gru / attention read the window in order (a click sequence); mean / attnpool pool it
    # without order (DeepSets-style: a window that is a set of samples); set: samples attend
    # to each other first (set transformer), then attention pooling.
    encoder: Literal["gru", "attention", "mean", "attnpool", "set"] = Field(
        "gru", description="DUET window encoder: gru | attention (in order) | mean | attnpool | set (order-free; "
                           "set: samples attend to each other); default: the task's")
    hidden_dim: int = Field(32, ge=1, description="DUET window-encoder width (vector c)")
    layer_embed_dim: int = Field(16, ge=1, description="DUET per-layer embedding size e_n")
    decoder_hidden: int = Field(32, ge=1, description="DUET decoder hidden width")
    rank: int | None = Field(None, ge=1, description="DUET low-rank weights U V^T of this rank (default: full rank)")
    # residual: theta_d = theta_g + delta (starts exactly at the global model);
    # paper: the generator produces the whole head.
    mode: Literal["residual", "paper"] = Field("residual", description="DUET generation: residual (theta_g + "
                                                                    "delta) | paper (the whole head)")
    # Dropout on the window embeddings and on c: without it the generator memorises
    # each training window (a window nearly identifies its user) and overfits at once.
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="DUET window-encoder dropout")
    num_generators: int = Field(3, ge=1, description="SWA generators N_p (1 = no SWA)")
    temperature: float = Field(1.0, gt=0.0, description="SWA softmax temperature tau")
    # hypnettorch's chunked hypernetwork: a unit (a weight and its bias, or one tensor)
    # larger than this is produced chunk_size outputs at a time by one decoder shared by
    # every chunk, told apart by a learned chunk embedding; None = a decoder per unit.
    chunk_size: int | None = Field(None, ge=1, description="DUET: generate tensors larger than this in chunks of "
                                   "this size (default: a decoder per tensor)")


# Defaults that depend on what is trained (chosen on validation, docs/RESULTS.md):
# a model trained from scratch (base, or DUET from scratch) climbs for many epochs
# at a high rate on a noisy validation curve, so it gets a long patience; DUET
# stage 2 starts from a trained model and overfits within a few epochs.
SCRATCH_SCHEDULE = {"lr": 3e-3, "epochs": 50, "patience": 5}
STAGE2_SCHEDULE = {"lr": 1e-3, "epochs": 10, "patience": 3}


class TrainConfig(Strict):
    """`lr`, `epochs` and `patience` left out take SCRATCH_SCHEDULE or, for DUET stage 2
    (method duet, not from scratch), STAGE2_SCHEDULE."""

    method: str = Field("base", pattern=r"^[a-z][a-z0-9_-]*$",
                        description="base | duet | one of the dataset task's own (e.g. pop, armbn)")
    epochs: int = Field(SCRATCH_SCHEDULE["epochs"], ge=1, description="maximum epochs (default 50; DUET stage 2: 10)")
    batch_size: int = Field(1024, ge=1, description="records per mini-batch (default: the task's)")
    eval_batch_size: int = Field(8192, ge=1, description="records per forward when evaluating")
    lr: float = Field(SCRATCH_SCHEDULE["lr"], gt=0, description="Adam learning rate (default 3e-3; DUET stage 2: 1e-3)")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    clip_norm: float = Field(5.0, gt=0, description="gradient-norm clipping, always applied")
    patience: int = Field(SCRATCH_SCHEDULE["patience"], ge=1,
                          description="early stopping: epochs without a gain of the task's validation metric "
                                      "(default 5; DUET stage 2: 3)")
    # plateau: every epoch without a validation gain halves the learning rate (the
    # next epochs refine instead of wandering); constant: the rate never changes.
    lr_schedule: Literal["constant", "plateau"] = Field(
        "constant", description="plateau (lr x --lr-decay after an epoch without a validation gain) | constant")
    lr_decay: float = Field(0.5, gt=0.0, le=1.0, description="plateau: lr factor after an epoch without gain")
    seed: int = Field(0, description="random seed")
    freeze_static: bool = Field(False, description="DUET: keep the static part = the global model")
    init_run: str | None = Field(None, description="DUET: take stage 1 from this base run")
    # The published code's schedule: no stage 1, the static part, theta_g and the
    # generator trained together from a random start.
    from_scratch: bool = Field(False, description="DUET: no stage 1; static part and generator trained jointly "
                                                  "from scratch (the published schedule)")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores)")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$",
                        description="cpu | cuda | auto (cuda where there is one)")

    @model_validator(mode="before")
    @classmethod
    def _schedule_defaults(cls, values: object) -> object:
        if isinstance(values, dict):
            stage2 = values.get("method") == "duet" and not values.get("from_scratch")
            missing = {k: v for k, v in (STAGE2_SCHEDULE if stage2 else SCRATCH_SCHEDULE).items()
                       if values.get(k) is None}
            values = {**values, **missing}
        return values

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainConfig:
        if self.from_scratch and (self.init_run is not None or self.freeze_static or self.method != "duet"):
            raise ValueError("from_scratch is for --method duet, without --init or --freeze-static")
        return self


# Options that were TrainConfig fields before the tasks that read them owned them, with the default
# every run had then (recommendation's fresh negatives per event).
MOVED_TO_TASK_OPTIONS = {"sampled_negatives": 4}


class RunConfig(Strict):
    """Everything needed to reproduce and rebuild a run.

    `task` and `builder` name the task and how to import it (`package.module:function`, called with
    `builder_options`);
    `facts` are the dataset facts the task's model needs (vocabulary, classes, shapes),
    validated by the task (`Task.facts`), never read by the core.
    """

    data: str
    data_hash: str = Field(description="sha256 of the dataset manifest, checked on load")
    task: str = Field(min_length=1)
    builder: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="package.module:function of the task")
    builder_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder "
                                            "(recorded by the dataset, e.g. a vocabulary size)")
    facts: dict[str, Any] = Field(default_factory=dict, description="the task's dataset facts")
    # The task's own options (its `options` model; only those given away from their defaults):
    # e.g. a recommendation run's sampled negatives. Other tasks' runs record none.
    options: dict[str, Any] = Field(default_factory=dict, description="the task's own training options")
    window_len: int = Field(ge=1)
    model: ModelConfig = ModelConfig()
    generator: GeneratorConfig | None = None
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _task_options_of_earlier_runs(cls, values: object) -> object:
        """Runs written before tasks owned their options kept them in `train`: such an option moves to
        `options`, where it differs from the default every run had then (so a run of a task that never
        read it records nothing)."""
        if isinstance(values, dict) and isinstance(values.get("train"), dict):
            train = dict(values["train"])
            moved = {k: train.pop(k) for k, default in MOVED_TO_TASK_OPTIONS.items() if k in train}
            if moved:
                options = {k: v for k, v in moved.items() if v != MOVED_TO_TASK_OPTIONS[k]}
                values = {**values, "train": train, "options": {**options, **values.get("options", {})}}
        return values
