"""dlib's ResNet face descriptor run by torch: the network :mod:`retrieval.aligners.face_resnet`
reads from dlib's file, as a torch module.

torch's convolutions (oneDNN) cost about what numpy's matrix products do on one face and less
on a batch of several, but a process pays over a second of CPU to import torch: a decoding
worker, which starts without it, pays that on its first face (docs/people.md has the figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.aligners.face_resnet import FoldedConv, Network, Pool, chip_batch, load


def _conv(conv: FoldedConv) -> nn.Conv2d:
    out, inp, rows, cols = conv.weight.shape
    layer = nn.Conv2d(inp, out, (rows, cols), stride=conv.stride, padding=conv.padding)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(conv.weight))
        assert layer.bias is not None
        layer.bias.copy_(torch.from_numpy(conv.bias))
    return layer


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add of two outputs: over their common part, each zero outside its own size."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def grown(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grown(a) + grown(b)


class _Block(nn.Module):
    def __init__(self, first: FoldedConv, second: FoldedConv, pool: Pool | None):
        super().__init__()
        self.first, self.second, self.pool = _conv(first), _conv(second), pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.second(F.relu(self.first(x)))
        shortcut = x if self.pool is None else F.avg_pool2d(x, self.pool.size, self.pool.stride)
        return F.relu(_add(shortcut, branch))


class TorchFaceResNet(nn.Module):
    """uint8 RGB chips in, dlib's 128-d descriptors out."""

    mean: torch.Tensor

    def __init__(self, net: Network):
        super().__init__()
        self.size = net.size
        self.register_buffer("mean", torch.tensor(net.means, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem, self.stem_pool = _conv(net.stem), net.stem_pool
        self.blocks = nn.ModuleList(_Block(b.first, b.second, b.pool) for b in net.blocks)
        weight = torch.from_numpy(net.fc.weight)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=net.fc.bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            if net.fc.bias is not None:
                self.fc.bias.copy_(torch.from_numpy(net.fc.bias))
        self.eval()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """`chips`: (N, rows, columns, 3) uint8 RGB, as dlib.get_face_chip makes them."""
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), self.stem_pool.size, self.stem_pool.stride)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    def describe(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 descriptors of aligned chips, in one batch."""
        batch = chip_batch(chips, self.size)
        with torch.inference_mode():
            return self(torch.from_numpy(batch)).numpy().astype(np.float32, copy=False)


def load_torch_face_resnet(path: Path) -> TorchFaceResNet:
    """The network of dlib's file at `path` in torch (ModelError, one line, when it cannot be)."""
    return load(path, TorchFaceResNet)
