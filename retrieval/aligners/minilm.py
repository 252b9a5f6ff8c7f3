"""all-MiniLM-L6-v2 (a 6-layer BERT) read straight from the packaged files, in two forms.

The network is transformers' ``BertModel`` with sentence-transformers' mean pooling
(``tests/test_aligners.py`` checks they agree), written out because loading it through
transformers costs seconds of imports and set-up. It runs two ways:

- numpy, for a handful of texts: a search query is embedded without importing torch,
  which is most of a one-shot ``retrieval search``'s start-up time;
- torch, for batches (twice as fast as numpy on CPU, and on the GPU where there is one).

Both compute the same function; their vectors agree to float32 rounding (about 1e-7).
Needs only ``tokenizers`` and ``safetensors``, which come with transformers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.aligners.base import normalize

#: Batches up to this size run in numpy (no torch import); larger ones in torch.
NUMPY_MAX_BATCH = 16


class SentenceEncoder:
    """Texts -> normalized sentence embeddings, as sentence-transformers computes them."""

    #: Bumped when the vectors this produces change; part of the class-embedding cache key.
    version = 1

    def __init__(self, folder: Path, device: str | None = None):
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
        self.dim = self.cfg["hidden_size"]
        self._torch_model = None

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
            return numpy_forward(self.weights, self.cfg, ids, mask)
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
def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf. Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32 rounding.
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    return np.sign(x) * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def numpy_forward(w: dict[str, np.ndarray], cfg: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The BERT encoder and mean pooling in numpy: (n, length) ids and mask -> (n, hidden)."""
    eps, length = cfg["layer_norm_eps"], ids.shape[1]
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:length]
    x = _layer_norm(x + w[e + "token_type_embeddings.weight"][0], w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"], eps)
    # Padding keys get a huge negative bias, so real tokens never attend to them.
    bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
    for i in range(cfg["num_hidden_layers"]):
        x = _numpy_layer(x, bias, w, f"encoder.layer.{i}.", cfg)
    weights = mask[..., None].astype(np.float32)
    return ((x * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)).astype(np.float32)


def _numpy_layer(x: np.ndarray, bias: np.ndarray, w: dict[str, np.ndarray], prefix: str, cfg: dict) -> np.ndarray:
    """One post-norm BERT block."""
    n, length, d = x.shape
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]

    def dense(h: np.ndarray, name: str) -> np.ndarray:
        return h @ w[f"{prefix}{name}.weight"].T + w[f"{prefix}{name}.bias"]

    def norm(h: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(h, w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"], eps)

    q, k, v = (
        dense(x, f"attention.self.{name}").reshape(n, length, heads, d // heads).transpose(0, 2, 1, 3)
        for name in ("query", "key", "value")
    )
    scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(d // heads)) + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    context = ((scores / scores.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(n, length, d)
    x = norm(x + dense(context, "attention.output.dense"), "attention.output.LayerNorm")
    hidden = dense(x, "intermediate.dense")
    hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.float32(math.sqrt(2.0))))  # exact (erf) GELU, as BERT's
    return norm(x + dense(hidden, "output.dense"), "output.LayerNorm")
