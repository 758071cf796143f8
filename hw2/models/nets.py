"""The networks a config or a checkpoint names: `model.net` as plain data, and built back from
it. Lightning-free, so a checkpoint's network is rebuilt without the training stack."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from torch import nn

NetSpec = Mapping[str, Any] | Callable[..., nn.Module]
# networks a checkpoint may name: rebuilding one calls its `_target_`, so never anything else
NET_MODULES = ("hw2.models.",)


def net_config(net: NetSpec) -> dict[str, Any]:
    """`model.net` (a Hydra partial, or its config) as plain data with its `_target_`, for the
    checkpoint's hyperparameters: `torch.load(weights_only=True)` reads it back."""
    if isinstance(net, DictConfig):
        net = OmegaConf.to_container(net, resolve=True)  # type: ignore[assignment]
    if isinstance(net, Mapping):
        spec = dict(net)
    elif isinstance(net, functools.partial) and not net.args:
        spec = {"_target_": f"{net.func.__module__}.{net.func.__qualname__}", **net.keywords}
    else:
        raise TypeError(f"model.net must be a `_target_` config or a Hydra partial, got {net!r}")
    spec.pop("_partial_", None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def build_net(spec: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """The network a `net_config` describes; only hw2's own networks may be named (a
    checkpoint's `_target_` is data from a file, not a licence to call anything)."""
    target = str(spec.get("_target_", ""))
    if not target.startswith(NET_MODULES):
        raise ValueError(f"model.net._target_={target!r} is not a network of "
                         f"{', '.join(NET_MODULES)}*: refusing to build it")
    return get_object(target)(**{k: v for k, v in spec.items() if k != "_target_"}, **kwargs)
