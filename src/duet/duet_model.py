"""DuetModel: a device model (the static part + dynamic head) plus the cloud-side PPG+SWA generator.

Task-agnostic: the device model says how a window becomes the generator's input
(`window_features`: item embeddings for recommendation, static CNN features for
images); the generator never sees anything else. In privacy mode the device sends
those features itself (`generate_from_features`), and the answer is the same.
"""

from __future__ import annotations

from torch import Tensor, nn

from duet.config import GeneratorConfig
from duet.data.store import PAD
from duet.generator.ppg import ParamGenerator
from duet.models.head import Params


class DuetModel(nn.Module):
    """Recommendation: `forward(history, window, item, inverse)`; the device model is `recommender`."""

    def __init__(self, recommender: nn.Module, window_len: int, cfg: GeneratorConfig):
        super().__init__()
        self.recommender, self.cfg = recommender, cfg
        self.generator = ParamGenerator(recommender.param_spec, self.feature_dim, window_len, cfg)

    @property
    def device_model(self) -> nn.Module:
        """The model a device runs (static part + head); its state-dict prefix differs per task."""
        return self.recommender

    @property
    def feature_dim(self) -> int:
        return self.recommender.cfg.embed_dim

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: ARG002
        """window (E, W) item ids, oldest first, left-aligned -> embeddings (E, W, D) and mask."""
        return self.recommender.item_embedding(window), window != PAD

    def generate_from_features(self, features: Tensor, mask: Tensor) -> Params:
        """features (E, W, D), mask (E, W) -> theta_d {name: (E, *shape)}."""
        generated = self.generator(features, mask)
        if self.cfg.mode == "paper":
            return generated
        theta_g = self.device_model.theta_g()
        return {name: theta_g[name] + delta for name, delta in generated.items()}

    def generate(self, window: Tensor, mask: Tensor | None = None) -> Params:
        return self.generate_from_features(*self.window_features(window, mask))

    def forward(self, history: Tensor, window: Tensor, item: Tensor, inverse: Tensor | None = None) -> Tensor:
        return self.recommender(history, item, inverse, self.generate(window))


class ImageDuet(DuetModel):
    """Images: `forward(x, window, mask)`, one generated head per sample from its device's window."""

    def __init__(self, classifier: nn.Module, window_len: int, cfg: GeneratorConfig):
        nn.Module.__init__(self)
        self.classifier, self.cfg = classifier, cfg
        self.generator = ParamGenerator(classifier.param_spec, classifier.feature_dim, window_len, cfg)

    @property
    def device_model(self) -> nn.Module:
        return self.classifier

    @property
    def feature_dim(self) -> int:
        return self.classifier.feature_dim

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """window (E, W, C, H, W) images, mask (E, W) -> static features (E, W, D) and mask."""
        return self.classifier.window_features(window, mask)

    def forward(self, x: Tensor, window: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.classifier(x, self.generate(window, mask))
