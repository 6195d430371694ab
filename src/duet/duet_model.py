"""DuetModel: the device model (Recommender) plus the cloud-side PPG+SWA generator."""

from __future__ import annotations

from torch import Tensor, nn

from duet.config import GeneratorConfig
from duet.data.store import PAD
from duet.generator.ppg import ParamGenerator
from duet.models.head import Params
from duet.models.recommender import Recommender


class DuetModel(nn.Module):
    def __init__(self, recommender: Recommender, window_len: int, cfg: GeneratorConfig):
        super().__init__()
        self.recommender, self.cfg = recommender, cfg
        self.generator = ParamGenerator(recommender.param_spec, recommender.cfg.embed_dim, window_len, cfg)

    def generate(self, window: Tensor) -> Params:
        """window (E, W) item ids, oldest first, left-aligned -> theta_d {name: (E, *shape)}."""
        mask = window != PAD
        generated = self.generator(self.recommender.item_embedding(window), mask)
        if self.cfg.mode == "paper":
            return generated
        theta_g = self.recommender.theta_g()
        return {name: theta_g[name] + delta for name, delta in generated.items()}

    def forward(self, history: Tensor, window: Tensor, item: Tensor, inverse: Tensor | None = None) -> Tensor:
        return self.recommender(history, item, inverse, self.generate(window))
