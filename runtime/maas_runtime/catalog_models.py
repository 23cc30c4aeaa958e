"""The builtin catalog models as `nn.ModuleDict`s keyed by exactly the unit names of `maas_api.catalog`.

Each model also says what it eats (`maas_input`), which units are task heads (`maas_heads`) and the named
sub-model of each unit (`maas_groups`), the same attributes a user factory may set.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from maas_api.catalog import (
    LargeModelArgs,
    MLPArgs,
    MultiTaskMLPArgs,
    TransformerArgs,
    parse_catalog_args,
)
from maas_api.spec import CatalogModel
from torch import nn


class LinearUnit(nn.Linear):
    """A Linear layer, optionally followed by ReLU (parameter names stay those of nn.Linear)."""

    def __init__(self, fan_in: int, fan_out: int, relu: bool) -> None:
        super().__init__(fan_in, fan_out)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = super().forward(x)
        return F.relu(y) if self.relu else y


class Embedding(nn.Module):
    """Token embedding plus a learned position embedding."""

    def __init__(self, vocab: int, dim: int, seq_len: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(seq_len, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device)
        embedded: torch.Tensor = self.tokens(ids) + self.positions(positions)
        return embedded


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention and a GELU feed-forward, no biases in the matmuls."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim, bias=False)
        self.ffn_out = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(dim, dim=-1)
        q, k, v = (t.view(batch, seq, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, seq, dim))
        out: torch.Tensor = x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))
        return out


class LanguageModelHead(nn.Module):
    """Final LayerNorm and the projection to vocabulary logits."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.out(self.norm(x))
        return logits


def _linear_stack(widths: list[int], prefix: str, relu_last: bool) -> dict[str, nn.Module]:
    count = len(widths) - 1
    return {
        f"{prefix}{i}": LinearUnit(widths[i], widths[i + 1], relu=relu_last or i < count - 1)
        for i in range(count)
    }


def _with_info(
    units: dict[str, nn.Module],
    input_spec: dict[str, Any],
    heads: list[str] | None = None,
    groups: dict[str, str] | None = None,
) -> nn.ModuleDict:
    model = nn.ModuleDict(units)
    # Plain attributes (nn.Module.__setattr__ is typed for tensors and modules only).
    object.__setattr__(model, "maas_input", input_spec)
    object.__setattr__(model, "maas_heads", heads or [])
    object.__setattr__(model, "maas_groups", groups or {})
    return model


def build_catalog_model(name: CatalogModel, args: dict[str, Any]) -> nn.ModuleDict:
    """Build a catalog model (on the current default device; the runtime uses `meta`)."""
    parsed = parse_catalog_args(name, args)
    if isinstance(parsed, LargeModelArgs):
        return _with_info(
            _linear_stack([10, 20, 30, 40], "layer_", False), {"shape": [10], "dtype": "float32"}
        )
    if isinstance(parsed, MLPArgs):
        widths = [parsed.input] + [parsed.hidden] * (parsed.layers - 1) + [parsed.output]
        return _with_info(
            _linear_stack(widths, "layer_", False), {"shape": [parsed.input], "dtype": "float32"}
        )
    if isinstance(parsed, TransformerArgs):
        return _transformer(parsed)
    if isinstance(parsed, MultiTaskMLPArgs):
        trunk = _linear_stack([parsed.input] + [parsed.hidden] * parsed.trunk_layers, "trunk_", True)
        heads = {
            f"head_{task}": LinearUnit(parsed.hidden, out, relu=False) for task, out in parsed.heads.items()
        }
        groups = {name: "trunk" for name in trunk} | {name: name for name in heads}
        return _with_info(
            trunk | heads, {"shape": [parsed.input], "dtype": "float32"}, heads=list(heads), groups=groups
        )
    raise AssertionError(f"no builder for catalog model {name}")  # pragma: no cover


def _transformer(a: TransformerArgs) -> nn.ModuleDict:
    units: dict[str, nn.Module] = {"embed": Embedding(a.vocab, a.dim, a.seq_len)}
    units |= {f"block_{i}": DecoderBlock(a.dim, a.heads, a.ffn_mult * a.dim) for i in range(a.layers)}
    units["head"] = LanguageModelHead(a.dim, a.vocab)
    groups = {"embed": "embedding", "head": "lm_head"} | {f"block_{i}": "decoder" for i in range(a.layers)}
    return _with_info(units, {"shape": [a.seq_len], "dtype": "int64", "high": a.vocab}, groups=groups)
