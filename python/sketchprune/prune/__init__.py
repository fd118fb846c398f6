"""Structured pruning: architecture adapters and physical slicing of Hugging Face models.

Step one of the pipeline: given the units to keep per layer (FFN channels, attention heads or
whole KV groups), :func:`slice_model` turns a model into a smaller dense one in place.
Step two: :func:`collect_statistics` streams calibration second moments, :data:`CRITERIA` scores
units from them, :func:`allocate` turns scores into per-layer keep-sets and :func:`prune_model`
does all of it and slices.  Reconstructing the kept weights comes later.
"""

from .allocation import (Allocation, LayerCosts, LayerPlan, LayerRemoval, allocate, layer_costs, layer_removal,
                         removal_plan)
from .adapters import (ArchitectureAdapter, AttnLinears, BertAdapter, FFNLinears, GemmaAdapter, HeadStructure,
                       LayerUnits, LlamaAdapter, OPTAdapter, get_adapter, register_adapter, supported_architectures)
from .calibration import (CalibrationStatistics, DiagMoments, FullMoments, LayerStatistics,
                          collect_statistics)
from .criteria import CRITERIA, Criterion, LayerContext, Scores, get_criterion, required_statistics, score_model
from .gradient_scores import gradient_statistics
from .pipeline import count_parameters, fold_mean_into_bias, prune_model
from .sequential import prune_sequential
from .streams import NonFiniteActivations
from .serialization import load_pruned, pruned_model_class, resize_to_structure
from .slicing import HeadPlan, KVGroups, QueryHeads, record_structure, resolve_heads, slice_model

__all__ = [
    "ArchitectureAdapter", "AttnLinears", "FFNLinears", "HeadStructure", "LayerUnits", "LlamaAdapter",
    "GemmaAdapter", "OPTAdapter", "BertAdapter",
    "get_adapter", "register_adapter", "supported_architectures",
    "HeadPlan", "KVGroups", "QueryHeads", "record_structure", "resolve_heads", "slice_model",
    "load_pruned", "pruned_model_class", "resize_to_structure",
    "CalibrationStatistics", "DiagMoments", "FullMoments", "LayerStatistics", "collect_statistics",
    "CRITERIA", "Criterion", "LayerContext", "Scores", "get_criterion", "required_statistics", "score_model",
    "Allocation", "LayerCosts", "LayerPlan", "LayerRemoval", "allocate", "layer_costs", "layer_removal",
    "removal_plan", "gradient_statistics",
    "count_parameters", "fold_mean_into_bias", "prune_model", "prune_sequential", "NonFiniteActivations",
]
