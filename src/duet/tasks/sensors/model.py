"""The sensor device model: a 1-D convolutional static part over a segment's six channels and a
dynamic classification head (the image classifier's head and global parameters, another body)."""

from __future__ import annotations

from torch import Tensor, nn

from duet.config import ModelConfig
from duet.tasks.images.model import ImageClassifier, block_channels, conv_blocks, image_head_widths


class SensorCNN(nn.Module):
    """(N, channels, T) -> features (N, D): three conv blocks with batch norm (what batch-norm
    adaptation and TENT adapt), pooled over time, then a linear map."""

    def __init__(self, channels: int, cfg: ModelConfig):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv1d(c_in, c_out, 5, stride=stride, padding=2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]

        self.conv = nn.Sequential(*block(channels, 32, 2), *block(32, 64, 2), *block(64, 64, 2),
                                  nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.project = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(64, cfg.embed_dim), nn.ReLU())

    @property
    def block_channels(self) -> list[int]:
        return block_channels(self.conv)

    def forward(self, x: Tensor, films: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        return self.project(conv_blocks(self.conv, x, films))


class SensorClassifier(ImageClassifier):
    """Classifies segments (N, channels, T); `params=None` uses theta_g. Same head, features and
    window handling as the image classifier, so its baselines (fine-tuning, TENT) apply unchanged."""

    def __init__(self, sample_shape: tuple[int, int], num_classes: int, cfg: ModelConfig):
        nn.Module.__init__(self)
        self.cfg, self.image_shape, self.num_classes = cfg, tuple(sample_shape), num_classes
        self.backbone = SensorCNN(sample_shape[0], cfg)
        self._init_head(image_head_widths(cfg, num_classes), cfg.activation)
        self._init_film()
