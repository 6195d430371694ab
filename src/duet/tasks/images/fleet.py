"""Build an image fleet: devices, each with its own class mix and covariate shift.

`digits-fleet` deals scikit-learn's bundled handwritten digits (1,797 real 8x8
images, no download) to devices. The images are split into train/valid/test
pools first (no image in two pools), then each device draws its samples from the
pools of its periods, with its own Dirichlet class mix, and sees them through its
own persistent shift. Seen devices have a training period (their early samples are
the cloud's training data) followed by a validation and a test period; unseen
devices have a single validation or test period and never appear in training.
`npz` takes a user's own `x`, `y`, `device` arrays (in time order) as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from duet.config import Strict
from duet.errors import DuetError
from duet.tasks.fleet.store import SPLIT_CODE
from duet.tasks.images.shifts import SHIFT_TYPES, apply_shift, draw_shift


class FleetConfig(Strict):
    """How `digits-fleet` (and, for the device split, `npz`) builds the fleet."""

    seed: int = 0
    seen_devices: int = Field(300, ge=1)
    unseen_valid_devices: int = Field(40, ge=1, description="new devices scored on validation (model selection)")
    unseen_test_devices: int = Field(80, ge=1, description="new devices scored on test")
    train_per_device: int = Field(30, ge=1, description="training samples of a seen device")
    valid_per_device: int = Field(30, ge=2)
    test_per_device: int = Field(40, ge=2)
    unseen_per_device: int = Field(60, ge=2, description="samples of an unseen device")
    adapt: int = Field(20, ge=1, description="first samples of a valid/test period: fine-tuning labels, never scored")
    window_len: int = Field(20, ge=1, description="window W: a device's most recent samples, unlabeled")
    # 0.1: most devices see one to three classes (the usual strongly non-IID federated setting)
    alpha: float = Field(0.1, gt=0, description="Dirichlet concentration of a device's class mix")
    pools: tuple[float, float, float] = (0.5, 0.2, 0.3)
    shift_types: tuple[str, ...] = SHIFT_TYPES
    unseen_fraction: float = Field(0.3, gt=0, lt=1, description="npz: share of devices held out as unseen")


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: (1797, 8, 8) in [0, 1] and labels 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def build_digits_fleet(cfg: FleetConfig) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """(samples, labels of every sample, manifest facts) of a digits fleet; deterministic for cfg.seed."""
    images, labels = digits()
    bad = [t for t in cfg.shift_types if t not in SHIFT_TYPES]
    if bad or not cfg.shift_types:
        raise DuetError(f"--shift-types: expected some of {', '.join(SHIFT_TYPES)}, got {bad or 'none'}")
    if cfg.adapt >= min(cfg.valid_per_device, cfg.test_per_device, cfg.unseen_per_device):
        raise DuetError(f"--adapt {cfg.adapt} leaves no scored samples: periods must be longer than it")
    rng = np.random.default_rng(cfg.seed)
    num_classes = int(labels.max()) + 1
    order = rng.permutation(len(images))
    cuts = np.round(np.cumsum(cfg.pools)[:-1] / sum(cfg.pools) * len(images)).astype(int)
    pools = dict(zip(("train", "valid", "test"), np.split(order, cuts), strict=True))
    by_class = {name: [pool[labels[pool] == c] for c in range(num_classes)] for name, pool in pools.items()}

    kinds = ([("seen", None)] * cfg.seen_devices + [("unseen", "valid")] * cfg.unseen_valid_devices
             + [("unseen", "test")] * cfg.unseen_test_devices)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "device", "position", "split", "adapt", "source")}
    devices = []
    for d, (kind, period) in enumerate(kinds):
        shift = draw_shift(str(rng.choice(cfg.shift_types)), rng)
        mix = rng.dirichlet(np.full(num_classes, cfg.alpha))
        periods = ([("train", cfg.train_per_device), ("valid", cfg.valid_per_device), ("test", cfg.test_per_device)]
                   if kind == "seen" else [(period, cfg.unseen_per_device)])
        source, split, adapt = [], [], []
        for name, count in periods:
            classes = rng.choice(num_classes, size=count, p=mix)
            source.append(np.array([rng.choice(by_class[name][c]) for c in classes], dtype=np.int64))
            split.append(np.full(count, SPLIT_CODE[name], dtype=np.int8))
            adapt.append((np.arange(count) < cfg.adapt) & (name != "train"))
        source_rows = np.concatenate(source)
        parts["x"].append(apply_shift(images[source_rows], shift)[:, None])
        parts["source"].append(source_rows)
        parts["split"].append(np.concatenate(split))
        parts["adapt"].append(np.concatenate(adapt).astype(np.int8))
        parts["device"].append(np.full(len(source_rows), d, dtype=np.int64))
        parts["position"].append(np.arange(len(source_rows), dtype=np.int64))
        devices.append({"id": d, "kind": kind, "split": period or "train", "shift": shift,
                        "class_mix": [round(float(p), 4) for p in mix]})
    samples = {k: np.concatenate(v) for k, v in parts.items()}
    facts = {"source": {"name": "digits-fleet", "images": int(len(images)),
                        "pools": {k: int(len(v)) for k, v in pools.items()}},
             "protocol": cfg.model_dump(mode="json"), "num_classes": num_classes,
             "image_shape": [1, *images.shape[1:]], "window_len": cfg.window_len, "devices": devices}
    return samples, labels[samples["source"]], facts


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A user's own images: arrays `x` (N, H, W) or (N, C, H, W), `y` (N,), `device` (N,), time-ordered."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y", "device") if k not in archive.files]
            if missing:
                raise DuetError(f"{path}: missing array(s) {', '.join(missing)}; expected x, y and device")
            x, y, device = archive["x"], archive["y"], archive["device"]
    except (OSError, ValueError) as exc:
        raise DuetError(f"{path}: not a readable .npz file ({exc})") from None
    if x.ndim == 3:
        x = x[:, None]
    n = len(x)
    if x.ndim != 4 or y.shape != (n,) or device.shape != (n,):
        raise DuetError(f"{path}: expected x (N, H, W) or (N, C, H, W), y (N,) and device (N,); got x {x.shape}, "
                        f"y {y.shape}, device {device.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise DuetError(f"{path}: x must be finite numbers")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise DuetError(f"{path}: y must be class indices >= 0 (integers), got dtype {y.dtype}")
    x = x.astype(np.float32)
    top = float(x.max()) if n else 1.0
    return (x / top if top > 1 else x), y.astype(np.int64), device


def build_npz_fleet(path: str | Path, cfg: FleetConfig) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """A user's devices as they are (no synthetic shift): a seeded share of devices is
    unseen (half valid, half test); a seen device's stream is split by time 60/20/20."""
    x, y, raw_device = read_npz(path)
    ids, first = np.unique(raw_device, return_index=True)
    ids = ids[np.argsort(first)]  # devices in order of first appearance
    if len(ids) < 3:
        raise DuetError(f"{path}: need at least 3 devices (seen, unseen valid, unseen test), got {len(ids)}")
    rng = np.random.default_rng(cfg.seed)
    n_unseen = max(2, int(round(cfg.unseen_fraction * len(ids))))
    unseen = rng.permutation(len(ids))[:n_unseen]
    period_of = {int(d): "seen" for d in range(len(ids))}
    for j, d in enumerate(unseen):
        period_of[int(d)] = "valid" if j % 2 == 0 else "test"
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "device", "position", "split", "adapt")}
    devices = []
    for d, raw in enumerate(ids):
        rows = np.flatnonzero(raw_device == raw)
        n = len(rows)
        if period_of[d] == "seen":
            cut1, cut2 = int(0.6 * n), int(0.8 * n)
            split = np.r_[np.zeros(cut1), np.ones(cut2 - cut1), np.full(n - cut2, 2)].astype(np.int8)
        else:
            split = np.full(n, SPLIT_CODE[period_of[d]], dtype=np.int8)
        adapt = np.zeros(n, dtype=np.int8)
        for code in (1, 2):  # the first `adapt` samples of each scored period, at most half of it
            period = np.flatnonzero(split == code)
            adapt[period[: min(cfg.adapt, len(period) // 2)]] = 1
        for key, value in (("rows", rows), ("device", np.full(n, d)), ("position", np.arange(n)),
                           ("split", split), ("adapt", adapt)):
            parts[key].append(value)
        devices.append({"id": d, "raw_id": raw.item(), "kind": "seen" if period_of[d] == "seen" else "unseen",
                        "split": "train" if period_of[d] == "seen" else period_of[d], "shift": {"type": "own"}})
    rows = np.concatenate(parts["rows"])
    samples = {"x": x[rows], "source": rows.astype(np.int64),
               **{k: np.concatenate(parts[k]).astype(np.int64 if k in ("device", "position") else np.int8)
                  for k in ("device", "position", "split", "adapt")}}
    facts = {"source": {"name": "npz", "path": str(Path(path).resolve()), "samples": int(len(x))},
             "protocol": {"seed": cfg.seed, "adapt": cfg.adapt, "window_len": cfg.window_len,
                          "unseen_fraction": cfg.unseen_fraction},
             "num_classes": int(y.max()) + 1, "image_shape": list(x.shape[1:]), "window_len": cfg.window_len,
             "devices": devices}
    return samples, y[rows], facts


def prepare_fleet(out: str | Path, source: str, cfg: FleetConfig, path: str | Path | None = None,
                  overwrite: bool = False) -> dict:
    """Build the image dataset directory `out` (atomically) and return its manifest."""
    from duet.atomic import atomic_dir
    from duet.tasks.fleet.store import write_fleet_dataset
    from duet.tasks.images import BUILDER, NAME

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if source == "digits-fleet":
        samples, y, facts = build_digits_fleet(cfg)
    elif source == "npz":
        if path is None:
            raise DuetError("--source npz needs --path (an .npz file with arrays x, y, device)")
        samples, y, facts = build_npz_fleet(path, cfg)
    else:
        raise DuetError(f"unknown image source {source!r}; expected digits-fleet or npz")
    labels = {name: y[samples["split"] == code] for name, code in SPLIT_CODE.items()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        return write_fleet_dataset(tmp, samples, labels, facts, task=(NAME, BUILDER))
