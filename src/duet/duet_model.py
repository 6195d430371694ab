"""DuetModel: a device model (the static part + dynamic head) plus the cloud-side PPG+SWA generator.

Task-agnostic: the device model says how a window becomes the generator's input
(`window_features`: the embeddings of a window of item ids, the static features of a
window of samples); the generator never sees anything else. In privacy mode the device sends
those features itself (`generate_from_features`), and the answer is the same.
"""

from __future__ import annotations

from torch import Tensor, nn

from duet.config import GeneratorConfig
from duet.generator.ppg import ParamGenerator
from duet.models.head import Params


class DuetModel(nn.Module):
    """`forward(*inputs, window=, mask=)`: the device model on its inputs with a head generated
    from each row's window. The device model gives `param_spec`, `theta_g()`, `feature_dim`,
    `window_features(window, mask)` and `forward(*inputs, params=None)`."""

    def __init__(self, device_model: nn.Module, window_len: int, cfg: GeneratorConfig):
        super().__init__()
        self.device_model = device_model
        self.cfg = cfg
        self.generator = ParamGenerator(device_model.param_spec, device_model.feature_dim, window_len, cfg)

    @property
    def feature_dim(self) -> int:
        return self.device_model.feature_dim

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The window as the generator reads it: features (E, W, D) and mask (E, W)."""
        return self.device_model.window_features(window, mask)

    def generate_from_features(self, features: Tensor, mask: Tensor) -> Params:
        """features (E, W, D), mask (E, W) -> theta_d {name: (E, *shape)}."""
        generated = self.generator(features, mask)
        if self.cfg.mode == "paper":
            return generated
        theta_g = self.device_model.theta_g()
        return {name: theta_g[name] + delta for name, delta in generated.items()}

    def generate(self, window: Tensor, mask: Tensor | None = None) -> Params:
        return self.generate_from_features(*self.window_features(window, mask))

    def forward(self, *inputs: Tensor, window: Tensor, mask: Tensor | None = None) -> Tensor:
        """The device model's forward on `inputs`, row e (or event e) with the head generated from window e."""
        return self.device_model(*inputs, params=self.generate(window, mask))
