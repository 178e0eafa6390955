"""The model zoo: the chapter-7 dense baselines and the chapter-8 convnets, looked up by name.

Every model is a pure ``nn.Module``: normalized float ``[N, 3, 32, 32]`` in, logits ``[N, 2]``
out. No device, dtype or I/O inside; preprocessing belongs to the exported serving graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

N_CLASSES = 2
IMAGE_PIXELS = 3 * 32 * 32


class Dense(nn.Module):
    """Chapter 7's fully connected baseline: 3072 -> 512 -> Tanh -> 2 (1,574,402 params)."""

    def __init__(self, hidden: tuple[int, ...] = (512,)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = IMAGE_PIXELS
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, N_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Net(nn.Module):
    """Chapter 8's first convnet (18,090 params); ``n_chans1=32`` is the wider NetWidth."""

    def __init__(self, n_chans1: int = 16, dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        c1, c2 = n_chans1, n_chans1 // 2
        self.conv1 = nn.Conv2d(3, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        # The book's NetBatchNorm normalizes between conv and activation.
        self.bn1 = nn.BatchNorm2d(c1) if batchnorm else nn.Identity()
        self.bn2 = nn.BatchNorm2d(c2) if batchnorm else nn.Identity()
        self.drop = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.fc1 = nn.Linear(8 * 8 * c2, 32)
        self.fc2 = nn.Linear(32, N_CLASSES)

    def forward(self, x):
        out = self.drop(F.max_pool2d(torch.tanh(self.bn1(self.conv1(x))), 2))
        out = self.drop(F.max_pool2d(torch.tanh(self.bn2(self.conv2(out))), 2))
        out = torch.tanh(self.fc1(out.flatten(1)))
        return self.fc2(out)


class NetDepth(nn.Module):
    """Three conv layers with ReLU (16,130 params); ``residual=True`` is the book's NetRes."""

    def __init__(self, n_chans1: int = 32, residual: bool = False):
        super().__init__()
        c1, c2 = n_chans1, n_chans1 // 2
        self.residual = residual
        self.conv1 = nn.Conv2d(3, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(c2, c2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * c2, 32)
        self.fc2 = nn.Linear(32, N_CLASSES)

    def forward(self, x):
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
        skip = out if self.residual else 0
        out = F.max_pool2d(torch.relu(self.conv3(out)) + skip, 2)
        out = torch.relu(self.fc1(out.flatten(1)))
        return self.fc2(out)


class ResBlock(nn.Module):
    """conv3x3 (no bias) -> BatchNorm -> ReLU, plus the identity skip."""

    def __init__(self, n_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(n_chans, n_chans, kernel_size=3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(n_chans)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.constant_(self.batch_norm.weight, 0.5)
        nn.init.zeros_(self.batch_norm.bias)

    def forward(self, x):
        return torch.relu(self.batch_norm(self.conv(x))) + x


class NetResDeep(nn.Module):
    """A deep stack of ResBlocks (994,530 params at 100 blocks)."""

    def __init__(self, n_chans1: int = 32, n_blocks: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        # One ResBlock object per position. The book's ``n_blocks * [ResBlock(...)]`` repeats a
        # single shared block n_blocks times (a known erratum); these blocks are distinct.
        self.resblocks = nn.Sequential(*(ResBlock(n_chans1) for _ in range(n_blocks)))
        self.fc1 = nn.Linear(8 * 8 * n_chans1, 32)
        self.fc2 = nn.Linear(32, N_CLASSES)

    def forward(self, x):
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(self.resblocks(out), 2)
        out = torch.relu(self.fc1(out.flatten(1)))
        return self.fc2(out)


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> BN -> ReLU -> conv -> BN -> ReLU: pooling right after the first
    conv keeps most of the compute at low resolution (the airbench layout)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = torch.relu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return torch.relu(self.bn2(self.conv2(x)))


class NetFast(nn.Module):
    """The fast recipe's convnet (under 100k params): a BN + ReLU stem and three ConvGroups
    (32 -> 16 -> 8 -> 4 pixels), global max-pool, one linear layer."""

    def __init__(self, widths: tuple[int, ...] = (24, 40, 64)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.groups = nn.Sequential(
            *(ConvGroup(c_in, c_out) for c_in, c_out in zip((widths[0],) + tuple(widths[:-1]), widths))
        )
        self.fc = nn.Linear(widths[-1], N_CLASSES)

    def forward(self, x):
        x = self.groups(torch.relu(self.stem_bn(self.stem(x))))
        return self.fc(torch.amax(x, dim=(2, 3)))


# name -> (constructor, default constructor args). The args are stored in the checkpoint, so a
# checkpoint rebuilds its model with ``build(ckpt["model"], **ckpt["model_args"])`` alone.
MODELS: dict[str, tuple[Callable[..., nn.Module], dict]] = {
    "dense": (Dense, {"hidden": (512,)}),
    "dense_deep": (Dense, {"hidden": (1024, 512, 128)}),
    "net": (Net, {"n_chans1": 16}),
    "net_width": (Net, {"n_chans1": 32}),
    "net_dropout": (Net, {"n_chans1": 32, "dropout": 0.4}),
    "net_batchnorm": (Net, {"n_chans1": 32, "batchnorm": True}),
    "net_depth": (NetDepth, {"n_chans1": 32}),
    "net_res": (NetDepth, {"n_chans1": 32, "residual": True}),
    "net_resdeep": (NetResDeep, {"n_chans1": 32, "n_blocks": 100}),
    # Not in the book: the fast recipe's default model (see models/recipes.py).
    "net_fast": (NetFast, {"widths": (24, 40, 64)}),
}


class UnknownModelError(ValueError):
    pass


def model_args(name: str, **overrides) -> dict:
    """The constructor args for ``name``: the registry's defaults updated by ``overrides``."""
    if name not in MODELS:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        )
    args = dict(MODELS[name][1])
    args.update(overrides)
    return args


def build(name: str, **overrides) -> nn.Module:
    """Build a fresh model by registry name; ``overrides`` replace default constructor args."""
    args = model_args(name, **overrides)
    return MODELS[name][0](**args)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
