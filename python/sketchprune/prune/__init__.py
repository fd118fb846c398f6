"""Structured pruning: architecture adapters and physical slicing of Hugging Face models.

Step one of the pipeline: given the units to keep per layer (FFN channels, attention heads or
whole KV groups), :func:`slice_model` turns a model into a smaller dense one in place.  Deciding
what to keep (criteria from streamed statistics) and reconstructing the kept weights come later.
"""

from .adapters import (ArchitectureAdapter, AttnLinears, FFNLinears, HeadStructure, LayerUnits, LlamaAdapter,
                       get_adapter, register_adapter, supported_architectures)
from .serialization import load_pruned, pruned_model_class, resize_to_structure
from .slicing import HeadPlan, KVGroups, QueryHeads, record_structure, resolve_heads, slice_model

__all__ = [
    "ArchitectureAdapter", "AttnLinears", "FFNLinears", "HeadStructure", "LayerUnits", "LlamaAdapter",
    "get_adapter", "register_adapter", "supported_architectures",
    "HeadPlan", "KVGroups", "QueryHeads", "record_structure", "resolve_heads", "slice_model",
    "load_pruned", "pruned_model_class", "resize_to_structure",
]
