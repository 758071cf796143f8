"""The CNN task's networks: the report's 3 conv + 1 fc, a batch-norm variant, ResNet-18.

Each is built as `net(num_classes=..., image_size=...)` (a Hydra partial in `model.net`), and
names its layers `conv1`, `conv2`, `conv3`, `fc` so TensorBoard sections read as in the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# the report's pooling: 2, 2, 4 -> the feature map side is image_size / 16
POOLS = (2, 2, 4)
DOWNSAMPLE = 16


def linear_in_features(image_size: int, channels: int = 32) -> int:
    """Input size of the report's fc: channels * (s/16)^2 (32*32*32 at 512 px)."""
    check_image_size(image_size)
    return channels * (image_size // DOWNSAMPLE) ** 2


def check_image_size(image_size: int) -> None:
    if image_size < DOWNSAMPLE or image_size % DOWNSAMPLE:
        raise ValueError(f"data.image_size={image_size} must be a positive multiple of "
                         f"{DOWNSAMPLE} (the network pools by 2*2*4), e.g. 512, 256, 128, 64")


def _three(channels: Sequence[int]) -> tuple[int, int, int]:
    if len(channels) != 3 or min(channels) < 1:
        raise ValueError(f"model.net.channels must be 3 positive ints, got {list(channels)}")
    return tuple(int(c) for c in channels)  # type: ignore[return-value]


class FoodCNN(nn.Module):
    """The report's network: 3 x (Conv 5x5 pad 2 -> ReLU -> MaxPool 2, 2, 4) -> Linear."""

    def __init__(self, num_classes: int, image_size: int = 512,
                 channels: Sequence[int] = (16, 32, 32), kernel_size: int = 5,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"model.net.dropout must be in [0, 1), got {dropout}")
        c1, c2, c3 = _three(channels)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(3, c1, kernel_size, padding=pad)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(POOLS[0])
        self.conv2 = nn.Conv2d(c1, c2, kernel_size, padding=pad)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(POOLS[1])
        self.conv3 = nn.Conv2d(c2, c3, kernel_size, padding=pad)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(POOLS[2])
        # regularisation only (no weights): the network stays the report's 3 conv + 1 fc
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(linear_in_features(image_size, c3), num_classes)
        self.image_size = image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.pool3(self.relu3(self.conv3(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"FoodCNN built for {self.image_size}x{self.image_size} inputs got "
                             f"{tuple(x.shape[-2:])}: model and data.image_size must agree")
        return self.fc(self.drop(torch.flatten(self.features(x), 1)))


class FoodCNNBN(nn.Module):
    """The report's network with batch norm after each conv, global average pooling instead
    of the 32*32*32 flatten (far fewer fc weights: less over-fitting), and dropout before fc."""

    def __init__(self, num_classes: int, image_size: int = 512,
                 channels: Sequence[int] = (32, 64, 128), kernel_size: int = 5,
                 dropout: float = 0.3) -> None:
        super().__init__()
        check_image_size(image_size)
        c1, c2, c3 = _three(channels)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(3, c1, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.pool1 = nn.MaxPool2d(POOLS[0])
        self.conv2 = nn.Conv2d(c1, c2, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.pool2 = nn.MaxPool2d(POOLS[1])
        self.conv3 = nn.Conv2d(c2, c3, kernel_size, padding=pad, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.pool3 = nn.MaxPool2d(POOLS[2])
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c3, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu(self.bn2(self.conv2(x))))
        x = self.pool3(self.relu(self.bn3(self.conv3(x))))
        return self.fc(self.drop(torch.flatten(self.gap(x), 1)))


def resnet18(num_classes: int, image_size: int = 224, weights_path: str | None = None
             ) -> nn.Module:
    """torchvision ResNet-18 from scratch; `weights_path` loads a local state_dict file
    (never a download). An ImageNet head of another size is left out: fc is trained anew."""
    from torchvision.models import resnet18 as tv_resnet18

    if image_size < 32:
        raise ValueError(f"data.image_size={image_size} is too small for ResNet-18 (>= 32)")
    net = tv_resnet18(weights=None, num_classes=num_classes)
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.net.weights_path={path} is not a file: give a "
                                    "ResNet-18 state_dict saved with torch.save, or null")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = net.state_dict()
        skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        for k in skipped:
            del state[k]
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ValueError(f"{path} is not a ResNet-18 state_dict: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        log.info("loaded %s (%s trained anew)", path, ", ".join(skipped) or "nothing")
    return net
