"""The ``digits`` classifier: a small CNN trained on scikit-learn's bundled 8x8 digits data set.

Training is deterministic: a fixed stratified split (80 % train, 20 % held-out test), fixed seeds,
one thread and torch's deterministic algorithms, so two builds on the same machine give the same
weights byte for byte. The network takes raw pixel values (0..16) and returns class probabilities;
scaling and softmax are part of the network, so the ONNX file needs no pre- or post-processing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DigitsConfig:
    """Architecture and training settings (stored as ``full_config.json`` next to the weights)."""

    channels: tuple[int, int, int] = (32, 64, 128)
    hidden: int = 256
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    test_fraction: float = 0.2

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DigitsConfig:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "channels" in fields:
            fields["channels"] = tuple(fields["channels"])
        return cls(**fields)


class DigitsCNN(nn.Module):
    """``[N,8,8]`` pixels in 0..16 -> ``[N,10]`` probabilities. Three 3x3 conv blocks, two dense layers."""

    def __init__(self, cfg: DigitsConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4 -> 2x2
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c3 * 4, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 10)
        )

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((image / 16.0).unsqueeze(1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(image), dim=1)


@dataclass(frozen=True)
class DigitsData:
    """The fixed split: float32 images ``[N,8,8]`` in 0..16 and int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_digits_split(cfg: DigitsConfig = DigitsConfig()) -> DigitsData:
    """scikit-learn's digits (1797 images, shipped with the package) split 80/20, stratified, seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32)
    y = data.target.astype(np.int64)
    tx, vx, ty, vy = train_test_split(x, y, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed)
    return DigitsData(tx, ty, vx, vy)


def train_digits(cfg: DigitsConfig, data: DigitsData) -> DigitsCNN:
    """Train the CNN from seed ``cfg.seed``; same inputs, same machine -> same weights."""
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(cfg.seed)
        model = DigitsCNN(cfg)
        optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * -(-len(data.train_x) // cfg.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.learning_rate, total_steps=steps)
        images = torch.from_numpy(data.train_x)
        labels = torch.from_numpy(data.train_y)
        order_rng = torch.Generator().manual_seed(cfg.seed)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(images), generator=order_rng)
            for start in range(0, len(images), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(model.logits(images[idx]), labels[idx])
                loss.backward()
                optimiser.step()
                schedule.step()
        return model.eval()
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)


def load_digits_model(cfg: DigitsConfig, weights_path) -> DigitsCNN:
    """Rebuild the CNN from its config and a safetensors file (eval mode)."""
    from safetensors.torch import load_file

    model = DigitsCNN(cfg)
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    return model.eval()
