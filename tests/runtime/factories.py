"""User factories for the runtime tests (imported by worker processes as `tests.runtime.factories:...`)."""

from __future__ import annotations

import torch
from torch import nn


class Scale(nn.Module):
    """A unit with a bare parameter and a buffer: it needs its own init_weights()."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.empty(width))
        self.register_buffer("offset", torch.empty(width))

    def init_weights(self) -> None:
        nn.init.uniform_(self.gain, 0.5, 1.5)
        nn.init.constant_(self.offset, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.offset


class Unscaled(Scale):
    """Scale without init_weights(): its parameters are left uninitialised, which the runtime must refuse."""

    init_weights = None  # type: ignore[assignment]


def encoder_decoder(width: int = 8, uninitialised: bool = False) -> nn.ModuleDict:
    """A small factory model with named groups and a declared input."""
    model = nn.ModuleDict(
        {
            "enc_0": nn.Linear(4, width),
            "enc_1": nn.Sequential(nn.ReLU(), nn.Linear(width, width)),
            "scale": Unscaled(width) if uninitialised else Scale(width),
            "dec_0": nn.Sequential(nn.ReLU(), nn.Linear(width, 3)),
        }
    )
    model.maas_input = {"shape": [4], "dtype": "float32"}
    model.maas_groups = {"enc_0": "encoder", "enc_1": "encoder", "scale": "decoder", "dec_0": "decoder"}
    return model


def not_a_module_dict(width: int = 8) -> nn.Module:
    return nn.Linear(width, width)


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x)


class Shift(nn.Module):
    """A unit with a buffer and no parameters."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("offset", torch.empty(width))

    def init_weights(self) -> None:
        nn.init.constant_(self.offset, 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.offset


UNEVEN_UNITS = ["squash", "linear", "residual", "activation", "norm", "scale", "shift", "output"]


def uneven(width: int = 8) -> nn.ModuleDict:
    """Units of very different kinds; `squash`, `activation` and `shift` have no parameters."""
    model = nn.ModuleDict(
        {
            "squash": nn.Tanh(),
            "linear": nn.Linear(4, width),
            "residual": Residual(width),
            "activation": nn.GELU(),
            "norm": nn.LayerNorm(width),
            "scale": Scale(width),
            "shift": Shift(width),
            "output": nn.Linear(width, 3),
        }
    )
    assert list(model) == UNEVEN_UNITS
    model.maas_input = {"shape": [4], "dtype": "float32"}
    return model


def feature_store(width: int = 8) -> nn.ModuleDict:
    """A factory that fails like code reaching for a service: a bug in the job, not a transient failure."""
    raise RuntimeError("could not connect to the feature store")


class LookUp(nn.Module):
    """A unit whose forward fails once it runs on real data (the meta-device trace passes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            raise ConnectionError("could not connect to the feature store")
        return x


def fails_in_forward(width: int = 8) -> nn.ModuleDict:
    model = encoder_decoder(width)
    model["dec_0"] = nn.Sequential(LookUp(), nn.Linear(width, 3))
    return model
