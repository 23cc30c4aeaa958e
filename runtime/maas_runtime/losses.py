"""Loss functions of `training.loss`, shared by the pipeline's last stage and the tests' reference runs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from maas_api.spec import Loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output.float(), target.float())


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Class scores are the last dim; every other dim (batch, sequence) is a sample.
    return F.cross_entropy(output.float().flatten(0, -2), target.flatten().long())


def loss_function(loss: Loss) -> LossFn:
    return {Loss.MSE: mse, Loss.CROSS_ENTROPY: cross_entropy}[loss]
