"""all-MiniLM-L6-v2 (a 6-layer BERT) read straight from the packaged files, in two forms.

The network is transformers' ``BertModel`` with sentence-transformers' mean pooling
(``tests/test_aligners.py`` checks they agree), written out because loading it through
transformers costs seconds of imports and set-up. It runs two ways:

- numpy, for up to a server's micro-batch of texts: a search query is embedded without importing torch,
  which is most of a one-shot ``retrieval search``'s start-up time;
- torch, for larger batches (faster per text when it has the cores to itself, and on a GPU).

Both compute the same function; their vectors agree to float32 rounding (about 1e-7).
Needs only ``tokenizers`` and ``safetensors``, which come with transformers.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.aligners.base import normalize
from retrieval.blas import OneBlasThread

if TYPE_CHECKING:
    from retrieval.aligners.minilm_torch import MiniLM

#: Batches up to this size run in numpy (no torch import); larger ones in torch. 64 is the
#: server's largest micro-batch (retrieval/server/batcher.py): on a busy 2-core machine torch's
#: thread team waits for cores that numpy on one thread never asks for
#: (docs/serving-speed.md#what-a-warm-query-does-now).
NUMPY_MAX_BATCH = 64


class SentenceEncoder:
    """Texts -> normalized sentence embeddings, as sentence-transformers computes them."""

    #: Bumped when the vectors this produces change; part of the class-embedding cache key.
    version = 1

    def __init__(self, folder: Path, device: str | None = None, one_blas_thread: bool = True):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.cfg = json.loads((folder / "config.json").read_text())
        if self.cfg.get("model_type") != "bert" or self.cfg.get("hidden_act") != "gelu":
            raise ValueError(f"{folder}: not a BERT encoder with GELU")
        st_cfg = folder / "sentence_bert_config.json"
        max_length = json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.exists() else 256
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=self.cfg.get("pad_token_id", 0))  # to the longest in the batch
        # The pooler (a CLS head) is unused by mean pooling; position_ids is a buffer, not a weight.
        self.weights = {
            k: v for k, v in load_file(str(folder / "model.safetensors")).items()
            if not k.startswith("pooler.") and not k.endswith("position_ids")
        }
        self.device = device
        #: Run the numpy form on one BLAS thread (see the note above :func:`numpy_forward`); off for comparisons.
        self.one_blas_thread = one_blas_thread
        self.dim = self.cfg["hidden_size"]
        self._torch_model: MiniLM | None = None
        self._numpy_layers: list[dict[str, np.ndarray]] | None = None

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(n, dim) normalized float32. Sorting by length keeps padding small."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encodings], np.int64)
            mask = np.array([e.attention_mask for e in encodings], np.int64)
            out[rows] = normalize(self.forward(ids, mask))
        return out

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled features, (n, dim), not normalized."""
        if len(ids) <= NUMPY_MAX_BATCH and self.device in (None, "cpu"):
            if self._numpy_layers is None:
                self._numpy_layers = pack_layers(self.weights, self.cfg)
            with OneBlasThread() if self.one_blas_thread else contextlib.nullcontext():
                return numpy_forward(self.weights, self.cfg, ids, mask, self._numpy_layers)
        return self.torch_forward(ids, mask)

    def torch_forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        from retrieval.aligners.minilm_torch import MiniLM
        from retrieval.aligners.runtime import pick_device

        if self._torch_model is None:
            device = pick_device(self.device)
            model = MiniLM(self.cfg)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()})
            self._torch_model = model.to(device).eval()
        device = next(self._torch_model.parameters()).device
        with torch.inference_mode():
            pooled = self._torch_model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        return pooled.float().cpu().numpy()


# -- numpy ----------------------------------------------------------------------------
# Short inputs (a search query is about 10 tokens) are what the numpy form is for, and at
# that size its cost is matrix products of a few rows: ~0.3 GFLOP a query. Two choices keep
# it fast: one BLAS thread (on a busy 2-core machine OpenBLAS's second thread waits for a
# core, and a query takes several times longer; docs/serving-speed.md#what-a-warm-query-does-now),
# and weights packed once (query, key and value in one product, the attention scale folded in).


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf. Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32 rounding.
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    return np.copysign(1.0 - poly * np.exp(-a * a), x)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    var = np.einsum("...i,...i->...", x, x)[..., None] / np.float32(x.shape[-1])
    x *= 1.0 / np.sqrt(var + np.float32(eps))
    x *= weight
    x += bias
    return x


def pack_layers(w: dict[str, np.ndarray], cfg: dict) -> list[dict[str, np.ndarray]]:
    """Per layer, the weights as the numpy forward uses them: (in, out) views, Q/K/V in one matrix.

    The 1/sqrt(head size) attention scale is folded into the query weights (exact up to rounding).
    """
    scale = np.float32(1.0 / math.sqrt(cfg["hidden_size"] // cfg["num_attention_heads"]))
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = [w[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value")]
        qkv_b = [w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]
        layers.append({
            "qkv": np.ascontiguousarray(np.concatenate([qkv[0] * scale, qkv[1], qkv[2]]).T),
            "qkv_b": np.concatenate([qkv_b[0] * scale, qkv_b[1], qkv_b[2]]),
            "out": w[f"{p}attention.output.dense.weight"].T, "out_b": w[f"{p}attention.output.dense.bias"],
            "ln1": w[f"{p}attention.output.LayerNorm.weight"], "ln1_b": w[f"{p}attention.output.LayerNorm.bias"],
            "up": w[f"{p}intermediate.dense.weight"].T, "up_b": w[f"{p}intermediate.dense.bias"],
            "down": w[f"{p}output.dense.weight"].T, "down_b": w[f"{p}output.dense.bias"],
            "ln2": w[f"{p}output.LayerNorm.weight"], "ln2_b": w[f"{p}output.LayerNorm.bias"],
        })
    return layers


def numpy_forward(
    w: dict[str, np.ndarray], cfg: dict, ids: np.ndarray, mask: np.ndarray,
    layers: list[dict[str, np.ndarray]] | None = None,
) -> np.ndarray:
    """The BERT encoder and mean pooling in numpy: (n, length) ids and mask -> (n, hidden).

    `layers` are :func:`pack_layers` of `w`, packed once by the caller that keeps them.
    """
    layers = layers if layers is not None else pack_layers(w, cfg)
    eps, (n, length), d = cfg["layer_norm_eps"], ids.shape, cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + (
        w[e + "position_embeddings.weight"][:length] + w[e + "token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"], eps).reshape(n * length, d)
    # Padding keys get a huge negative bias, so real tokens never attend to them (none to add
    # for a single text, or texts of one length).
    bias = None
    if not mask.all():
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
    for layer in layers:
        x = _numpy_layer(x, bias, layer, n, length, heads, eps)
    x = x.reshape(n, length, d)
    weights = mask[..., None].astype(np.float32)
    return ((x * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)).astype(np.float32)


def _numpy_layer(
    x: np.ndarray, bias: np.ndarray | None, w: dict[str, np.ndarray], n: int, length: int, heads: int, eps: float
) -> np.ndarray:
    """One post-norm BERT block on (n * length, d) rows."""
    d = x.shape[1]
    qkv = x @ w["qkv"]
    qkv += w["qkv_b"]
    q, k, v = qkv.reshape(n, length, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
    scores = q @ k.transpose(0, 1, 3, 2)
    if bias is not None:
        scores += bias
    scores -= scores.max(-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(-1, keepdims=True)
    context = (scores @ v).transpose(0, 2, 1, 3).reshape(n * length, d)
    attended = context @ w["out"]
    attended += w["out_b"]
    attended += x
    x = _layer_norm(attended, w["ln1"], w["ln1_b"], eps)
    hidden = x @ w["up"]
    hidden += w["up_b"]
    hidden *= 0.5 * (1.0 + _erf(hidden * np.float32(1.0 / math.sqrt(2.0))))  # exact (erf) GELU, as BERT's
    out = hidden @ w["down"]
    out += w["down_b"]
    out += x
    return _layer_norm(out, w["ln2"], w["ln2_b"], eps)


# Kept under its old name: the limiter now lives in retrieval/blas.py (the quick scan uses it too).
_OneBlasThread = OneBlasThread
