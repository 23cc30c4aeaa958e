"""The builtin model catalog: each model's arguments, unit names and analytical cost profile.

The runtime builds these models as an `nn.ModuleDict` whose keys are exactly the unit names here; the
operator profiles them from these formulas without torch. A runtime test checks the formulas against
torch's own parameter count and FLOP counter, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints, ValidationError

from maas_api.base import ApiModel
from maas_api.plan import ModelProfile
from maas_api.spec import CatalogModel, ModelSpec, UnitProfile

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Upper bounds of the catalog's arguments: above the largest published models (widths of tens of thousands,
# vocabularies of a few hundred thousand, contexts of a million tokens), and low enough that every formula
# below stays an exact float (FLOPs per sample under 2**64), so the planner never meets an overflow.
MAX_FEATURES = 2**20
"""Widths of MLP layers and heads, and the transformer's model width."""
MAX_VOCAB = 2**22
MAX_SEQ_LEN = 2**21
MAX_FFN_MULT = 64
MAX_HEADS = 1024
"""Task heads of a MultiTaskMLP (each is a unit), and attention heads of a Transformer."""
HEAD_UNIT_PREFIX = "head_"
_UNIT_NAME = UnitProfile.model_json_schema()["properties"]["name"]
HeadName = Annotated[
    str,
    StringConstraints(
        pattern=_UNIT_NAME["pattern"],
        min_length=1,
        max_length=_UNIT_NAME["maxLength"] - len(HEAD_UNIT_PREFIX),
    ),
]
"""A head's name makes the unit name `head_<name>`, so it follows UnitProfile.name's rules."""
Features = Annotated[int, Field(ge=1, le=MAX_FEATURES)]


class LargeModelArgs(ApiModel):
    """The reference model: Linear 10->20->30->40 with ReLU between layers. It takes no arguments."""


class MLPArgs(ApiModel):
    """A stack of Linear layers with ReLU between them."""

    input: int = Field(default=64, ge=1, le=MAX_FEATURES)
    """Input features."""
    hidden: int = Field(default=256, ge=1, le=MAX_FEATURES)
    """Hidden features."""
    layers: int = Field(default=4, ge=1, le=4096)
    """Number of Linear layers (units)."""
    output: int = Field(default=64, ge=1, le=MAX_FEATURES)
    """Output features."""


class TransformerArgs(ApiModel):
    """A small decoder-only transformer (pre-norm, causal attention, GELU feed-forward, no biases)."""

    vocab: int = Field(default=1024, ge=2, le=MAX_VOCAB)
    """Vocabulary size."""
    dim: int = Field(default=128, ge=8, le=MAX_FEATURES)
    """Model width."""
    layers: int = Field(default=4, ge=1, le=1024)
    """Decoder blocks."""
    heads: int = Field(default=4, ge=1, le=MAX_HEADS)
    """Attention heads (must divide dim)."""
    seq_len: int = Field(default=64, ge=1, le=MAX_SEQ_LEN)
    """Tokens per sample."""
    ffn_mult: int = Field(default=4, ge=1, le=MAX_FFN_MULT)
    """Feed-forward width as a multiple of dim."""


class MultiTaskMLPArgs(ApiModel):
    """A shared MLP trunk and one Linear head per task; the output is the heads' outputs concatenated."""

    input: int = Field(default=32, ge=1, le=MAX_FEATURES)
    """Input features."""
    hidden: int = Field(default=64, ge=1, le=MAX_FEATURES)
    """Trunk width."""
    trunk_layers: int = Field(default=3, ge=1, le=1024)
    """Linear layers in the trunk."""
    heads: dict[HeadName, Features] = Field(
        default_factory=lambda: {"classify": 10, "regress": 1}, min_length=1, max_length=MAX_HEADS
    )
    """Head name -> output features (>= 1), in order; each head is the unit `head_<name>`."""


CATALOG_ARGS: dict[CatalogModel, type[ApiModel]] = {
    CatalogModel.LARGE_MODEL: LargeModelArgs,
    CatalogModel.MLP: MLPArgs,
    CatalogModel.TRANSFORMER: TransformerArgs,
    CatalogModel.MULTI_TASK_MLP: MultiTaskMLPArgs,
}


class CatalogArgsError(ValueError):
    """Arguments that do not fit the catalog model; the message names each field under spec.model.args."""


def parse_catalog_args(model: CatalogModel, args: dict[str, Any]) -> ApiModel:
    try:
        parsed = CATALOG_ARGS[model].model_validate(args)
    except ValidationError as error:
        problems = "; ".join(
            f"spec.model.args.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise CatalogArgsError(f"{problems} (catalog model {model.value})") from error
    if isinstance(parsed, TransformerArgs) and parsed.dim % parsed.heads:
        raise CatalogArgsError(
            f"spec.model.args.heads: {parsed.heads} does not divide dim {parsed.dim} (catalog model Transformer)"
        )
    return parsed


def _linear(name: str, fan_in: int, fan_out: int, value_bytes: int, **extra: Any) -> UnitProfile:
    return UnitProfile(
        name=name,
        params=fan_in * fan_out + fan_out,
        flops_per_sample=2.0 * fan_in * fan_out,
        activation_bytes_per_sample=fan_out * value_bytes,
        # Linear saves its input (the unit before counts it) and ReLU its output: training keeps the output.
        saved_bytes_per_sample=fan_out * value_bytes,
        **extra,
    )


def _transformer_units(a: TransformerArgs, value_bytes: int) -> list[UnitProfile]:
    d, t, v, f = a.dim, a.seq_len, a.vocab, a.ffn_mult * a.dim
    hidden_bytes = t * d * value_bytes
    # Block: fused qkv (3d^2) + output projection (d^2) + two feed-forward matrices (2df) + two LayerNorms.
    block_params = 4 * d * d + 2 * d * f + 4 * d
    # Matmuls count 2 FLOPs per multiply-add; attention adds QK^T and AV, 2*t*t*d each.
    block_flops = 2.0 * t * (4 * d * d + 2 * d * f) + 4.0 * t * t * d
    # What autograd saves per token (flash attention, as on a GPU and torch's CPU kernel): the two LayerNorm
    # outputs and their mean and rstd (2 values each), q/k/v (3d), the attention output (d), the residual
    # between the halves (d), both feed-forward activations (2f) and the output (d), in the model dtype,
    # plus attention's log-sum-exp per head in float32. About 16x the block's output (8d + 2f for f = 4d).
    block_saved = t * value_bytes * (8 * d + 2 * f + 4) + t * a.heads * 4
    units = [
        UnitProfile(
            name="embed",
            group="embedding",
            params=v * d + t * d,
            flops_per_sample=0.0,
            activation_bytes_per_sample=hidden_bytes,
            saved_bytes_per_sample=hidden_bytes,  # the lookups save only the token ids (the input)
        )
    ]
    units += [
        UnitProfile(
            name=f"block_{i}",
            group="decoder",
            params=block_params,
            flops_per_sample=block_flops,
            activation_bytes_per_sample=hidden_bytes,
            saved_bytes_per_sample=block_saved,
        )
        for i in range(a.layers)
    ]
    units.append(
        UnitProfile(
            name="head",
            group="lm_head",
            params=2 * d + d * v,
            flops_per_sample=2.0 * t * d * v,
            activation_bytes_per_sample=t * v * value_bytes,
            # The LayerNorm's output, mean and rstd, and the logits.
            saved_bytes_per_sample=t * value_bytes * (d + 2 + v),
        )
    )
    return units


def catalog_profile(model: ModelSpec) -> ModelProfile:
    """The unit profile of a catalog model with its arguments (raises CatalogArgsError on bad args)."""
    if model.catalog is None:
        raise ValueError("catalog_profile needs spec.model.catalog")
    args = parse_catalog_args(model.catalog, model.args)
    value_bytes = DTYPE_BYTES[model.dtype]
    try:
        return ModelProfile(units=_catalog_units(args, value_bytes))
    except ValidationError as error:
        # Arguments within their own bounds can still make a unit larger than a profile may describe.
        first = error.errors()[0]
        raise CatalogArgsError(
            f"spec.model.args: the arguments make a unit too large ({'.'.join(map(str, first['loc']))}:"
            f" {first['msg']}); use smaller dimensions (catalog model {model.catalog.value})"
        ) from error


def _catalog_units(args: ApiModel, value_bytes: int) -> list[UnitProfile]:
    units: list[UnitProfile]
    if isinstance(args, LargeModelArgs):
        widths = [10, 20, 30, 40]
        units = [_linear(f"layer_{i}", widths[i], widths[i + 1], value_bytes) for i in range(3)]
    elif isinstance(args, MLPArgs):
        widths = [args.input] + [args.hidden] * (args.layers - 1) + [args.output]
        units = [_linear(f"layer_{i}", widths[i], widths[i + 1], value_bytes) for i in range(args.layers)]
    elif isinstance(args, TransformerArgs):
        units = _transformer_units(args, value_bytes)
    elif isinstance(args, MultiTaskMLPArgs):
        widths = [args.input] + [args.hidden] * args.trunk_layers
        units = [
            _linear(f"trunk_{i}", widths[i], widths[i + 1], value_bytes, group="trunk")
            for i in range(args.trunk_layers)
        ]
        units += [
            _linear(
                f"{HEAD_UNIT_PREFIX}{name}",
                args.hidden,
                out,
                value_bytes,
                group=f"{HEAD_UNIT_PREFIX}{name}",
                head=True,
            )
            for name, out in args.heads.items()
        ]
    else:  # pragma: no cover - CATALOG_ARGS and this function are edited together
        raise AssertionError(f"no profile for {type(args).__name__}")
    return units


def model_profile(model: ModelSpec) -> ModelProfile:
    """The profile the planner uses: the user's for a factory model, the catalog's formulas otherwise."""
    if model.profile is not None:
        return ModelProfile(units=model.profile)
    return catalog_profile(model)
