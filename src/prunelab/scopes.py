"""Which layers a plan may prune (the scope), and the distinct weights behind them.

Two layers can share one weight (``net.b.weight = net.a.weight``); everything that masks or
counts works on distinct parameters, named as ``model.named_parameters()`` names them (the
first name), so a shared weight gets one mask and is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import PlanError

CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
SCOPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": CONV_TYPES,
    "all": (*CONV_TYPES, nn.Linear),
    "linear": (nn.Linear,),
}
COVERS = {
    "conv": "Conv1d/2d/3d and ConvTranspose1d/2d/3d",
    "all": "Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear",
    "linear": "Linear",
}


def prunable_layers(model: nn.Module, scope: str = "conv") -> dict[str, nn.Module]:
    """Modules whose `.weight` a plan may prune, by module name in model order.

    Scopes: "conv" = every Conv1d/2d/3d and ConvTranspose1d/2d/3d (subclasses included);
    "linear" = every nn.Linear; "all" = both. Other layers (BatchNorm, embeddings, attention
    projections that are not nn.Linear) are never pruned.
    """
    if scope not in SCOPES:
        raise PlanError(
            f"unknown scope {scope!r}; valid scopes: {', '.join(SCOPES)} "
            f"({'; '.join(f'{k}: {v}' for k, v in COVERS.items())})"
        )
    return {n: m for n, m in model.named_modules() if isinstance(m, SCOPES[scope])}


def _layer_types(model: nn.Module) -> str:
    """Distinct class names of the model's leaf modules, in order of first appearance."""
    names = dict.fromkeys(type(m).__name__ for m in model.modules() if not any(m.children()))
    return ", ".join(names) or "none"


def _layers_or_raise(model: nn.Module, scope: str) -> dict[str, nn.Module]:
    """prunable_layers, refusing a scope that matches nothing (naming what would match)."""
    layers = prunable_layers(model, scope)
    if not layers:
        other = list(prunable_layers(model, "all"))
        raise PlanError(
            f"scope {scope!r} ({COVERS[scope]}) matches no layer of {type(model).__name__}, "
            f"whose layer types are {_layer_types(model)}; layers under scope 'all': "
            f"{', '.join(other) or 'none'}"
        )
    return layers


@dataclass(frozen=True)
class PrunableWeight:
    """One distinct weight of the scope: its parameter name, the parameter, the layers using it."""

    name: str
    param: nn.Parameter
    layers: tuple[str, ...]

    @property
    def layer(self) -> str:
        """The first layer (model order) using this weight: where plans and scans look it up."""
        return self.layers[0]

    @property
    def numel(self) -> int:
        return self.param.numel()


def parameter_names(model: nn.Module) -> dict[int, str]:
    """{id(parameter): its first name}, the name ``model.named_parameters()`` gives."""
    return {id(p): n for n, p in model.named_parameters()}


def prunable_weights(model: nn.Module, scope: str = "conv") -> dict[str, PrunableWeight]:
    """The distinct weights of the scope's layers, {parameter name: PrunableWeight}, in the
    order of the first layer using each (for the study's VGG: backbone.conv0.weight, ...)."""
    names = parameter_names(model)
    out: dict[str, PrunableWeight] = {}
    for layer, m in _layers_or_raise(model, scope).items():
        w = m.weight
        if not isinstance(w, nn.Parameter) or id(w) not in names:
            raise PlanError(
                f"layer {layer!r} has no weight parameter of its own (its weight is computed, "
                "e.g. by torch.nn.utils.prune or parametrize); remove that before pruning"
            )
        name = names[id(w)]
        prev = out.get(name)
        out[name] = PrunableWeight(name, w, (*prev.layers, layer) if prev else (layer,))
    return out


def name_index(weights: dict[str, PrunableWeight]) -> dict[str, str]:
    """Every name a plan may use for a weight -> its parameter name: the parameter name, each
    layer using it, and each such layer's 'layer.weight' (so an alias finds the shared mask)."""
    index: dict[str, str] = {}
    for w in weights.values():
        index[w.name] = w.name
        for layer in w.layers:
            index[layer] = index[f"{layer}.weight"] = w.name
    return index
