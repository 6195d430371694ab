"""What a device could do without DUET, on the same devices and samples:

* fine-tuning: copy the global model, take `steps` Adam steps on the device's k
  labelled samples (its adaptation prefix), classify its scored samples;
* TENT (Wang et al., ICLR 2021): no labels, but gradients on the device: the
  batch-norm affine parameters minimise the entropy of the predictions on the
  device's unlabeled adaptation samples, whose statistics also replace the
  training-time batch-norm statistics;
* batch-norm statistics from the device's unlabelled samples (Schneider et al., NeurIPS
  2020): no gradient, no label; each batch norm normalises with a mix of the training
  statistics and the device's own, (N mu_train + n mu_device) / (N + n) for n samples and
  a prior strength N chosen on validation (N = 0: the device's statistics alone); the same
  code scores a model trained for it (ARM-BN, `duet.tasks.images.armbn`);
* an oracle per shift type: the global model trained further on the training data
  of one shift type, told each test device's type (an upper bound on knowing the shift).

Every device's copy is discarded after scoring; wall time and peak memory per device
are recorded (one thread, as on a phone core).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.memory import reset_peak_rss, rss_bytes
from duet.tasks.fleet.batches import SampleBatcher, predict_samples
from duet.tasks.fleet.store import SPLIT_CODE, FleetData, FleetSplit
from duet.tasks.images.model import ImageClassifier
from duet.training.distributed import model_device


@dataclass
class Adapted:
    """Logits of a split's scored samples after per-device adaptation, and its costs."""

    logits: np.ndarray  # (N, classes), in the split's record order
    seconds: np.ndarray  # (devices,) adaptation wall time per device
    peak_bytes: np.ndarray  # (devices,) peak RSS growth per device (0 where not measurable)


def adaptation_rows(data: FleetData, split: str, device: int) -> np.ndarray:
    """Rows of a device's adaptation prefix in `split` (labels usable by fine-tuning only)."""
    return np.flatnonzero((data.device == device) & (data.split == SPLIT_CODE[split]) & (data.adapt == 1))


def per_device(model: ImageClassifier, split: FleetSplit, adapt: Callable[[ImageClassifier, int], nn.Module],
               threads: int = 1, label: str | None = None) -> Adapted:
    """Run `adapt(model, device)` for every device of the split and score its samples with the
    result; `label` shows a progress bar under that name."""
    from rich.progress import track

    where = model_device(model)  # ARM-BN's validation runs where the model trains
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    logits = np.zeros((len(split), model.num_classes), dtype=np.float32)
    devices = np.unique(split.device)
    seconds, peaks = np.zeros(len(devices)), np.zeros(len(devices), dtype=np.int64)
    shown = track(devices, description=label, transient=True) if label else devices
    try:
        for i, device in enumerate(shown):
            measurable = reset_peak_rss()
            before = rss_bytes("VmRSS")
            started = time.perf_counter()
            local = adapt(model, int(device))
            seconds[i] = time.perf_counter() - started
            peaks[i] = max(0, rss_bytes("VmHWM") - before) if measurable else 0
            mine = np.flatnonzero(split.device == device)
            with torch.no_grad():
                logits[mine] = local(torch.from_numpy(split.data.x[split.rows[mine]]).to(where)).cpu().numpy()
    finally:
        torch.set_num_threads(previous)
    return Adapted(logits, seconds, peaks)


def finetune_images(model: ImageClassifier, split: FleetSplit, k: int, steps: int, lr: float,
                    scope: str = "all", progress: bool = False) -> Adapted:
    """Fine-tune a copy per device on its first `k` labelled adaptation samples."""
    data = split.data
    labels = dict(zip(*data.split_labels(split.name), strict=True))

    def adapt(base: ImageClassifier, device: int) -> nn.Module:
        rows = adaptation_rows(data, split.name, device)[:k]
        local = copy.deepcopy(base)
        local.eval()  # batch norm keeps the global statistics: k samples are too few to estimate them
        params = list(local.global_params.values()) if scope == "head" else list(local.parameters())
        optimizer = torch.optim.Adam(params, lr=lr)
        x = torch.from_numpy(data.x[rows])
        y = torch.tensor([labels[r] for r in rows], dtype=torch.long)
        for _ in range(steps):
            loss = F.cross_entropy(local(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return local

    label = f"fine-tune {k} labels, {steps} steps, lr {lr:g} ({split.name})" if progress else None
    return per_device(model, split, adapt, label=label)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # 1-D and 2-D


def tent_images(model: ImageClassifier, split: FleetSplit, steps: int, lr: float, progress: bool = False) -> Adapted:
    """TENT per device on its unlabeled adaptation samples; returns the adapted copies' logits."""
    data = split.data

    def adapt(base: ImageClassifier, device: int) -> nn.Module:
        rows = adaptation_rows(data, split.name, device)
        local = copy.deepcopy(base)
        local.eval()
        local.requires_grad_(False)
        norms = batch_norms(local)
        for norm in norms:
            norm.train()  # normalise with the device's own batch statistics
            norm.momentum = None  # cumulative average: after the last pass, exactly the device's statistics
            norm.reset_running_stats()
            norm.weight.requires_grad_(True)
            norm.bias.requires_grad_(True)
        optimizer = torch.optim.Adam([p for n in norms for p in (n.weight, n.bias)], lr=lr)
        x = torch.from_numpy(data.x[rows])
        for _ in range(steps):
            log_prob = F.log_softmax(local(x), dim=1)
            entropy = -(log_prob.exp() * log_prob).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            entropy.backward()
            optimizer.step()
        for norm in norms:  # final statistics with the adapted parameters, then frozen for scoring
            norm.reset_running_stats()
        with torch.no_grad():
            local(x)
        local.eval()
        return local

    return per_device(model, split, adapt, label=f"TENT, {steps} steps, lr {lr:g} ({split.name})" if progress else None)


def bnstats_images(model: ImageClassifier, split: FleetSplit, prior: int, context: int | None = None,
                   threads: int = 1, progress: bool = False) -> Adapted:
    """Batch-norm statistics from each device's unlabelled adaptation samples, mixed with the training
    statistics at prior strength `prior` (Schneider et al., 2020); no gradient, no label.

    `context`: only the prefix's `context` most recent samples (the window W a device holds);
    None: the whole prefix. `threads`: torch threads while adapting (1: a phone core)."""
    data = split.data

    def adapt(base: ImageClassifier, device: int) -> nn.Module:
        rows = adaptation_rows(data, split.name, device)[-context if context else None:]
        return with_statistics(base, torch.from_numpy(data.x[rows]), prior)

    return per_device(model, split, adapt, threads,
                      label=f"BN statistics, prior {prior} ({split.name})" if progress else None)


def with_statistics(base: nn.Module, x: Tensor, prior: int) -> nn.Module:
    """A copy of `base` (in eval mode) whose batch norms hold the statistics of their inputs on
    `x` (N, ...), mixed with `base`'s own at prior strength `prior`."""
    local = copy.deepcopy(base)
    local.eval()
    norms = batch_norms(local)
    saved = [(n.running_mean.clone(), n.running_var.clone()) for n in norms]
    for norm in norms:
        norm.train()
        norm.momentum = None  # cumulative: after one pass, exactly the device's statistics
        norm.reset_running_stats()
    with torch.no_grad():
        local(x.to(model_device(local)))
    n = len(x)
    for norm, (mean, var) in zip(norms, saved, strict=True):
        norm.running_mean.mul_(n / (prior + n)).add_(mean * prior / (prior + n))
        norm.running_var.mul_(n / (prior + n)).add_(var * prior / (prior + n))
    local.eval()
    return local


def train_oracle(model: ImageClassifier, train: FleetSplit, valid: FleetSplit, window_len: int, seed: int,
                 epochs: int = 20, patience: int = 3, lr: float = 1e-3, batch_size: int = 128) -> ImageClassifier:
    """The global model trained further on one shift type's samples (`train`, `valid` already
    restricted to it), the epoch selected on that type's validation accuracy."""
    local = copy.deepcopy(model)
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    batcher = SampleBatcher(train, batch_size, window_len)
    best, best_state, bad = _accuracy(local, valid), copy.deepcopy(local.state_dict()), 0
    for epoch in range(epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)
        local.train()
        for batch in batcher.shuffled(seed, epoch):
            loss = F.cross_entropy(local(batch.x), batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accuracy = _accuracy(local, valid)
        if accuracy > best:
            best, best_state, bad = accuracy, copy.deepcopy(local.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    local.load_state_dict(best_state)
    local.eval()
    return local


def _accuracy(model: nn.Module, split: FleetSplit) -> float:
    return float((predict_samples(model, split).argmax(1) == split.y).mean())
