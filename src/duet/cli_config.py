"""Turn CLI options into one validated RunConfig (every flag lands in the config)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from duet.config import GeneratorConfig, ModelConfig, RunConfig, TrainConfig
from duet.errors import DuetError


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None or not text.strip():
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise DuetError(f"--head-hidden: expected comma-separated integers, got {text!r}") from None


def train_config(
    data: Path, backbone: str | None, method: str, epochs: int | None, batch_size: int | None, lr: float | None,
    weight_decay: float, clip_norm: float, patience: int | None, seed: int, threads: int | None, embed_dim: int, num_blocks: int,
    num_heads: int, dropout: float, head_hidden: str | None, activation: str, encoder: str, gen_hidden: int,
    layer_embed_dim: int, decoder_hidden: int, rank: int | None, mode: str, gen_dropout: float, num_generators: int,
    temperature: float, freeze_static: bool, init: Path | None, from_scratch: bool = False,
    lr_schedule: str = "constant", lr_decay: float = 0.5, sampled_negatives: int = 4, device: str = "cpu",
    film: bool = False, device_history: int | None = None,
) -> RunConfig:
    """Validate every option; a bad value is a one-line DuetError naming the option.

    The dataset says its task; options left unset (None) take that task's defaults."""
    from duet.tasks import dataset_task
    from duet.training.loop import run_config_for

    task = dataset_task(data)
    choices = task.backbones
    backbone = backbone or choices[0]
    if backbone not in choices:
        raise DuetError(f"--backbone: {backbone!r} is not a static part of the {task.name} task; choose one of "
                        f"{', '.join(choices)}")
    if method not in task.methods:
        raise DuetError(f"--method: {method!r} is not a method of the {task.name} task; choose one of "
                        f"{', '.join(task.methods)}")
    encoder = encoder or task.defaults.get("encoder", "mean")
    batch_size = batch_size or task.defaults.get("batch_size", 128)
    try:
        model = ModelConfig(backbone=backbone, embed_dim=embed_dim, num_blocks=num_blocks, num_heads=num_heads,
                            dropout=dropout, head_hidden=_ints(head_hidden), activation=activation,
                            film=film, device_history=device_history)
        generator = GeneratorConfig(encoder=encoder, hidden_dim=gen_hidden, layer_embed_dim=layer_embed_dim,
                                    decoder_hidden=decoder_hidden, rank=rank, mode=mode, dropout=gen_dropout,
                                    num_generators=num_generators, temperature=temperature)
        train = TrainConfig(method=method, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                            clip_norm=clip_norm, patience=patience, seed=seed, threads=threads,
                            freeze_static=freeze_static, init_run=str(init) if init else None,
                            from_scratch=from_scratch, lr_schedule=lr_schedule, lr_decay=lr_decay,
                            sampled_negatives=sampled_negatives, device=device)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "option"
        raise DuetError(f"{field}: {err['msg']} (got {err.get('input')!r})") from None
    config = run_config_for(data, task, model=model, train=train, generator=generator if method == "duet" else None)
    task.build(config)  # a model its task cannot build is a one-line error before anything is written
    return config
