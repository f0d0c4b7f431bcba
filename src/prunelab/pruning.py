"""Fine-grained magnitude pruning on any nn.Module: one import for masks (`masks`), scopes
(`scopes`), plans and the Pruner (`pruner`), and sparsity/MAC/size accounting (`accounting`).
"""

from .accounting import (
    UINT16_SPAN,
    count_macs,
    count_params,
    encoded_nbytes,
    format_sparsity_table,
    model_input_shape,
    sparsity_report,
)
from .masks import check_sparsity, fine_grained_mask
from .pruner import Pruner, _global_plan, _param_name, _plan_sparsity, resolve_plan
from .scopes import (
    COVERS,
    SCOPES,
    PrunableWeight,
    _layers_or_raise,
    prunable_layers,
    prunable_weights,
)

__all__ = [
    "COVERS", "SCOPES", "UINT16_SPAN", "PrunableWeight", "Pruner", "_global_plan",
    "_layers_or_raise", "_param_name", "_plan_sparsity", "check_sparsity", "count_macs",
    "count_params", "encoded_nbytes", "fine_grained_mask", "format_sparsity_table",
    "model_input_shape", "prunable_layers", "prunable_weights", "resolve_plan",
    "sparsity_report",
]  # fmt: skip
