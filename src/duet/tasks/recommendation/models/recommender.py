"""Recommender = static part (backbone) + dynamic head with global parameters theta_g."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from duet.config import ModelConfig
from duet.models.film import LayerFilm
from duet.models.head import Params, WithGlobalHead
from duet.tasks.recommendation.data.store import PAD
from duet.tasks.recommendation.models.backbones import BACKBONES


def head_widths(cfg: ModelConfig) -> tuple[int, ...]:
    if cfg.backbone == "din":
        hidden = cfg.head_hidden if cfg.head_hidden is not None else (32,)
        return (3 * cfg.embed_dim, *hidden, 1)
    hidden = cfg.head_hidden if cfg.head_hidden is not None else (cfg.embed_dim,)
    return (cfg.embed_dim, *hidden, cfg.embed_dim)


def tail_items(history: Tensor, n: int) -> Tensor:
    """history (E, L), left-aligned -> its last n items (E, n), left-aligned, PAD-padded
    (the torch twin of the dataset's `tail_window`). A history of width <= n is returned
    padded to n, so the device graph (which is given n items) computes the same thing."""
    count = (history != PAD).sum(1, keepdim=True)  # (E, 1)
    index = (count - n).clamp(min=0) + torch.arange(n, device=history.device)  # (E, n)
    items = history.gather(1, index.clamp(max=history.shape[1] - 1))
    return torch.where(index < count, items, torch.full_like(items, PAD))


class Recommender(WithGlobalHead):
    """Scores (history, candidate item) pairs. `params=None` uses theta_g.

    Inputs are grouped by event: `history` (E, L) once per event, `item` (B,)
    per record and `inverse` (B,) the event of each record, so a positive and its
    negatives share one encoder pass. Per-device params are `(E, *shape)`.

    With `cfg.device_history` N (a compressed device model), the static part reads only
    the last N items of each history: `history_len` is then N, what the device graph takes.
    """

    def __init__(self, num_items: int, history_len: int, cfg: ModelConfig):
        super().__init__()
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {sorted(BACKBONES)}")
        if cfg.device_history is not None and cfg.device_history > history_len:
            raise ValueError(f"device_history {cfg.device_history} is longer than the dataset's history "
                             f"({history_len})")
        self.cfg = cfg
        self.num_items, self.history_len = num_items, cfg.device_history or history_len
        self.backbone = BACKBONES[cfg.backbone](num_items, self.history_len, cfg)
        self._init_head(head_widths(cfg), cfg.activation)
        self._init_film()

    def _init_film(self) -> None:
        """With `film`, the backbone's `film_layers` get a per-dimension scale (1) and shift (0)
        that are dynamic: generation inside the static part. The target item's embedding is
        read outside them, so only the history is FiLM-ed."""
        self.films = None
        if not self.cfg.film:
            return
        history = torch.ones(2, self.history_len, dtype=torch.long)
        target = torch.zeros(2, self.backbone.items.embedding.embedding_dim)
        probe = ((lambda: self.backbone(history, target)) if self.backbone.head_on == "record"
                 else (lambda: self.backbone(history)))
        self.films = LayerFilm(self.backbone, self.backbone.film_layers(self.cfg), probe, axis=-1)
        self._add_films(self.films)

    def _static(self, params: Params, *inputs: Tensor) -> Tensor:
        """The backbone on `inputs`, FiLM-ed by `params` when the model has FiLM layers."""
        if self.films is None:
            return self.backbone(*inputs)
        with self.films.applied(params):
            return self.backbone(*inputs)

    @property
    def item_embedding(self) -> nn.Embedding:
        return self.backbone.items.embedding

    @property
    def feature_dim(self) -> int:
        """Width of what the generator reads: an item embedding."""
        return self.cfg.embed_dim

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: ARG002
        """window (E, W) item ids, oldest first, left-aligned -> embeddings (E, W, D) and its mask."""
        return self.item_embedding(window), window != PAD

    def static_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def forward(
        self, history: Tensor, item: Tensor, inverse: Tensor | None = None, params: Params | None = None
    ) -> Tensor:
        """history (E, L), item (B,), inverse (B,) -> logits (B,)."""
        if inverse is None:
            inverse = torch.arange(item.shape[0], device=item.device)
        params = self.theta_g() if params is None else params
        if self.cfg.device_history is not None:
            history = tail_items(history, self.cfg.device_history)  # (E, N)
        target = self.backbone.items(item)  # (B, D)
        if self.backbone.head_on == "event":
            user = self.head(self._static(params, history), params)  # (E, D)
            return (user[inverse] * target).sum(-1)
        if next(iter(params.values())).dim() == len(self.param_spec.entries[0][1]):  # one head for all
            return self.head(self._static(params, history[inverse], target), params).squeeze(-1)
        E, B = history.shape[0], item.shape[0]
        if self.films is None and E == 1:  # one event (the device graph, one request): its head, every record
            return self.head(self._static(params, history[inverse], target).unsqueeze(0), params).reshape(B)
        if self.films is None and B % E == 0 and bool((torch.bincount(inverse, minlength=E) == B // E).all()):
            # C records per event (a training batch, a split's fixed candidates): the head runs once per
            # event on its C records instead of copying the event's head to each record
            order = torch.argsort(inverse, stable=True)  # (B,) records grouped by event, events in order
            features = self._static(params, history[inverse[order]], target[order])  # (B, F)
            logits = self.head(features.view(E, B // E, -1), params).reshape(B)
            return torch.empty_like(logits).index_copy_(0, order, logits)
        params = {k: v[inverse] for k, v in params.items()}  # (B, *shape)
        return self.head(self._static(params, history[inverse], target), params).squeeze(-1)
