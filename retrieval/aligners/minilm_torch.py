"""The torch form of MiniLM (see ``minilm.py``): for batches, and for the GPU.

Parameter names follow the packaged checkpoint's keys, so its weights load as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _module(**children: nn.Module) -> Any:
    """A plain container, to reproduce the checkpoint's nesting of names.

    Typed Any: its children are reached as attributes set at run time, which nn.Module's
    ``__getattr__`` types as "a tensor or a module".
    """
    m = nn.Module()
    for name, child in children.items():
        m.add_module(name, child)
    return m


class _Layer(nn.Module):
    """One post-norm BERT block."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps, inner = cfg["hidden_size"], cfg["layer_norm_eps"], cfg["intermediate_size"]
        self.heads = cfg["num_attention_heads"]
        self.attention = _module(
            self=_module(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d)),
            output=_module(dense=nn.Linear(d, d), LayerNorm=nn.LayerNorm(d, eps=eps)),
        )
        self.intermediate = _module(dense=nn.Linear(d, inner))
        self.output = _module(dense=nn.Linear(inner, d), LayerNorm=nn.LayerNorm(d, eps=eps))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        att = self.attention

        def split(linear: nn.Module) -> torch.Tensor:
            return linear(x).view(n, length, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(att.self.query), split(att.self.key), split(att.self.value)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(n, length, d)
        x = att.output.LayerNorm(x + att.output.dense(context))
        return self.output.LayerNorm(x + self.output.dense(F.gelu(self.intermediate.dense(x))))


class MiniLM(nn.Module):
    """BERT encoder + mean pooling: (n, length) ids and mask -> (n, hidden) features."""

    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["hidden_size"]
        self.embeddings = _module(
            word_embeddings=nn.Embedding(cfg["vocab_size"], d),
            position_embeddings=nn.Embedding(cfg["max_position_embeddings"], d),
            token_type_embeddings=nn.Embedding(cfg["type_vocab_size"], d),
            LayerNorm=nn.LayerNorm(d, eps=cfg["layer_norm_eps"]),
        )
        self.encoder = _module(layer=nn.ModuleList(_Layer(cfg) for _ in range(cfg["num_hidden_layers"])))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(positions) + e.token_type_embeddings.weight[0])
        # Padding keys get a huge negative bias, so real tokens never attend to them.
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, bias)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
