"""Aligners written by ``retrieval train``: a checkpoint file that describes itself.

A checkpoint holds the starting aligner's spec and identity, the trained projection
heads (and unlocked tower stages, if any), the training config and a run id. Its path
alone is a valid ``--model``: the base aligner is loaded from its spec (packaged or
cached weights), checked against the recorded identity, and the heads go on top.

The identity, ``trained/<run id>-<weights digest>``, changes whenever the weights do,
so an index built with one epoch's weights refuses vectors from another's.

Checkpoints are plain ``torch.save`` dicts of tensors and built-in types, read with
``weights_only=True`` (no pickled code runs on load), and written atomically: a crash
leaves the previous complete file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieval.aligners.base import Aligner, AlignerBase
from retrieval.aligners.runtime import to_numpy
from retrieval.aligners.towers import ImageTower, image_tower
from retrieval.errors import ModelError

log = logging.getLogger(__name__)

FORMAT = "retrieval-trained"
FORMAT_VERSION = 1
#: CLIP's initial temperature (0.07) and its cap on the logit scale (100).
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)

#: Loads a checkpoint's starting aligner from what it recorded (its spec and identity) and a device.
BaseLoader = Callable[[dict[str, Any], str | None], Aligner]


class Projection(nn.Module):
    """A linear map, plus (with ``hidden``) a residual MLP whose output starts at zero.

    ``identity_columns`` makes the linear map start as the identity from those input
    columns to the output, so training begins at the base aligner's behaviour.
    """

    def __init__(self, dim_in: int, dim_out: int, hidden: int = 0, identity_columns: slice | None = None):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out, bias=False)
        self.mlp = None
        if identity_columns is not None:
            nn.init.zeros_(self.linear.weight)
            with torch.no_grad():
                block = self.linear.weight[:, identity_columns]
                block.copy_(torch.eye(dim_out, block.shape[1]))
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))
            last = self.mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out + self.mlp(x) if self.mlp is not None else out


class Heads(nn.Module):
    """Image and text projections into one space, and the learned temperature."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: int = 0, image_base_columns: slice | None = None):
        super().__init__()
        self.image = Projection(image_dim, dim, hidden, image_base_columns)
        self.text = Projection(text_dim, dim, hidden, slice(0, text_dim) if text_dim == dim else None)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    @classmethod
    def from_config(cls, config: dict, tower: ImageTower) -> Heads:
        base_columns = tower.base_columns if config["dim"] == tower.base_columns.stop - tower.base_columns.start else None
        return cls(tower.feature_dim, config["text_dim"], config["dim"], config.get("hidden", 0), base_columns)


def weights_digest(*state_dicts: dict) -> str:
    """A content hash of the weights an aligner computes with (stable across save/load)."""
    h = hashlib.blake2b(digest_size=16)
    for state in state_dicts:
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write atomically: a temporary file beside `path`, then one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports bad files as many exception types
        raise ModelError(f"{path} is not a checkpoint written by `retrieval train` ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not a checkpoint written by `retrieval train`")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer version of retrieval (format {payload['format_version']})")
    return payload


class TrainedAligner(AlignerBase):
    """A base aligner's frozen towers, an optionally retrained trunk, and trained heads."""

    def __init__(
        self, base: Aligner, tower: ImageTower, heads: Heads, spec: str, identity: str, config: dict, info: dict | None = None
    ):
        self.base = base
        self.config = config
        self.tower = tower
        self.heads = heads.to(tower.device).eval()
        self.spec = spec
        self.identity = identity
        self.dim = heads.image.linear.out_features
        self.transform = tower.transform
        self.device = tower.device
        self.info = info or {}

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return to_numpy(self.heads.image(self.tower.features(pixels)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return to_numpy(self.heads.text(self.text_features(texts)))

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.base.encode_texts(texts)).to(self.device)

    def describe(self) -> dict:
        return {**super().describe(), "base": self.base.spec, **self.info}


def build(payload: dict, spec: str, device: str | None = None, *, load_base: BaseLoader) -> TrainedAligner:
    """The aligner a checkpoint payload describes (the base is loaded by its spec, with `load_base`)."""
    base_info, config = payload["base"], payload["config"]
    try:
        base = load_base(base_info, device)
    except ModelError as exc:
        raise ModelError(f"{spec}: its starting aligner {base_info['spec']!r} cannot be loaded: {exc}") from exc
    if base.identity != base_info["identity"]:
        raise ModelError(
            f"{spec} was trained on top of {base_info['identity']}, which this installation cannot "
            f"rebuild ({base_info['spec']!r} now loads {base.identity}): retrain it"
        )
    tower = image_tower(base, config.get("unlock", 0))
    if payload.get("trunk"):
        tower.trunk.load_state_dict(payload["trunk"])
    heads = Heads.from_config(config, tower)
    heads.load_state_dict(payload["heads"])
    info = {"run_id": payload["run_id"], "epoch": payload.get("best", {}).get("epoch")}
    return TrainedAligner(base, tower, heads, spec, payload["identity"], config, info)


def load_trained(path: str | Path, device: str | None = None, *, load_base: BaseLoader) -> TrainedAligner:
    """Load a checkpoint written by ``retrieval train`` as an aligner.

    `load_base` loads the aligner it was trained on from what the checkpoint recorded
    (:func:`retrieval.aligners.registry.rebuild_base`, which the registry passes in: the registry
    imports this module, so this module does not import the registry).

    >>> from retrieval.aligners.registry import rebuild_base                  # doctest: +SKIP
    >>> aligner = load_trained("shapes.pt", load_base=rebuild_base)          # doctest: +SKIP
    >>> aligner.encode_texts(["a red circle"]).shape             # doctest: +SKIP
    (1, 384)
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"checkpoint file not found: {path}")
    payload = read_checkpoint(path)
    log.info("loading trained aligner %s (base %s)", payload["identity"], payload["base"]["spec"])
    return build(payload, str(path), device, load_base=load_base)
