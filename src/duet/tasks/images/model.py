"""The image device model: a small CNN static part and a dynamic classifier head.

As for recommendation, the head's parameters are an input (theta_g by default,
one generated head per sample otherwise), so the same module runs with the global
head, on the device with generated parameters, and inside the DUET model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from duet.config import ModelConfig
from duet.models.film import film_at
from duet.models.head import Params, WithGlobalHead
from duet.tasks.fleet.batches import sample_window_features


def image_head_widths(cfg: ModelConfig, num_classes: int) -> tuple[int, ...]:
    hidden = cfg.head_hidden if cfg.head_hidden is not None else (cfg.embed_dim,)
    return (cfg.embed_dim, *hidden, num_classes)


def block_channels(conv: nn.Sequential) -> list[int]:
    """Output channels of each conv block of a conv -> batch norm -> ReLU stack (where FiLM applies)."""
    return [m.num_features for m in conv if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def conv_blocks(conv: nn.Sequential, x: Tensor, films: list[tuple[Tensor, Tensor]] | None) -> Tensor:
    """The stack on x; `films`: a (scale, shift) per block, applied after its activation (None: none)."""
    if films is None:
        return conv(x)
    block = 0
    for module in conv:
        x = module(x)
        if isinstance(module, nn.ReLU):
            x = film_at(x, *films[block], axis=1)
            block += 1
    return x


class SmallCNN(nn.Module):
    """(N, C, H, W) -> features (N, D): two 3x3 conv blocks with batch norm, a pool, a third
    conv block, then a linear map. Batch norm is what TENT adapts on the device."""

    def __init__(self, image_shape: tuple[int, int, int], cfg: ModelConfig):
        super().__init__()
        channels, height, width = image_shape

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.conv = nn.Sequential(*block(channels, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32))
        flat = 32 * (height // 2) * (width // 2)
        self.project = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(flat, cfg.embed_dim), nn.ReLU())

    @property
    def block_channels(self) -> list[int]:
        return block_channels(self.conv)

    def forward(self, x: Tensor, films: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        return self.project(conv_blocks(self.conv, x, films))


class ImageClassifier(WithGlobalHead):
    """Classifies images. `params=None` uses theta_g; per-sample params are `(N, *shape)`."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig):
        super().__init__()
        if cfg.backbone != "cnn":
            raise ValueError(f"the image task's static part is cnn, got {cfg.backbone!r}")
        self.cfg, self.image_shape, self.num_classes = cfg, tuple(image_shape), num_classes
        self.backbone = SmallCNN(self.image_shape, cfg)
        self._init_head(image_head_widths(cfg, num_classes), cfg.activation)
        self._init_film()

    def _init_film(self) -> None:
        """With `film`, each conv block's per-channel scale (1) and shift (0) are dynamic parameters."""
        self.film_blocks = len(self.backbone.block_channels) if self.cfg.film else 0
        for i, channels in enumerate(self.backbone.block_channels[: self.film_blocks]):
            self._add_dynamic(f"film.{i}.scale", torch.ones(channels))
            self._add_dynamic(f"film.{i}.shift", torch.zeros(channels))

    @property
    def feature_dim(self) -> int:
        return self.cfg.embed_dim

    def static_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def features(self, x: Tensor, params: Params | None = None) -> Tensor:
        """(N, C, H, W) -> (N, D): what the device computes and, in privacy mode, uploads (with the
        global FiLM parameters: the window is read before any generated parameter exists)."""
        if not self.film_blocks:
            return self.backbone(x)
        params = self.theta_g() if params is None else params
        return self.backbone(x, [(params[f"film.{i}.scale"], params[f"film.{i}.shift"])
                                 for i in range(self.film_blocks)])

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Window images (E, W, C, H, W) -> their static features (E, W, D) and mask (E, W)."""
        return sample_window_features(self.features, self.feature_dim, window, mask)

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """x (N, C, H, W) -> class logits (N, num_classes)."""
        params = self.theta_g() if params is None else params
        return self.head(self.features(x, params), params)
