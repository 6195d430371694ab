"""One window's head outside the service (`duet generate --window`), and the window layout every
generation path shares: the last W samples, left-aligned and zero-padded, with their mask.

Task-agnostic: the run's SampleSpec (`Task.sample`) says what one sample of a window is, so the
same code serves a run of token ids and a run of float samples alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duet.errors import DuetError
from duet.spec import SampleSpec


def last_rows(rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """rows (n, ...) oldest first -> the last `length`, left-aligned and zero-padded (length, ...), and their mask."""
    last = rows[-length:]
    out = np.zeros((length, *rows.shape[1:]), dtype=rows.dtype)
    out[: len(last)] = last
    mask = np.zeros(length, dtype=bool)
    mask[: len(last)] = True
    return out, mask


def float_windows_hint(sample: SampleSpec) -> str:
    """Where a float-sample run's windows go, for the one-line refusal of a token-only input."""
    shape = ", ".join(map(str, sample.shape))
    return (f"this run's windows are float samples of shape ({shape}): use POST /v1/parameters or "
            f"--windows with a .npy of shape (N, W, {shape})")


def parse_window(text: str, sample: SampleSpec) -> np.ndarray:
    """`--window` (comma-separated values, oldest first) -> validated samples (n,); one-line DuetError otherwise."""
    if not sample.is_token:
        raise DuetError(f"--window: {float_windows_hint(sample)}")
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DuetError(f"--window: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise DuetError("--window: at least one value is needed")
    low = -np.inf if sample.low is None else sample.low
    high = np.inf if sample.high is None else sample.high
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise DuetError(f"--window: values must be in {sample.low}..{sample.high}, got {bad[:5]}")
    try:
        return sample.rows(values)
    except (ValueError, OverflowError) as exc:  # values beyond int64 where the spec sets no bound
        raise DuetError(f"--window: {exc}") from None


def generate_for_window(run: str | Path, window: str, device: str = "cpu") -> tuple[dict[str, np.ndarray], str]:
    """`duet generate --window`: the run's own (unfolded) generator on one window -> ({name: array}, spec hash)."""
    import torch

    from duet.accel import resolve_device
    from duet.checkpoint import load_run
    from duet.duet_model import DuetModel
    from duet.task import task_of_run

    target = resolve_device(device)
    config, model, _ = load_run(run)
    if not isinstance(model, DuetModel):
        raise DuetError(f"{run}: a {config.train.method} run has no generator; train with --method duet")
    rows, mask = last_rows(parse_window(window, task_of_run(config).sample(config)), config.window_len)
    with torch.inference_mode():
        params = model.to(target).generate(torch.from_numpy(rows[None]).to(target),
                                           torch.from_numpy(mask[None]).to(target))
    return {k: v[0].cpu().numpy() for k, v in params.items()}, model.device_model.param_spec.hash
