"""Architecture adapters: where the prunable depth-2 units of a transformer live.

A transformer block holds two kinds of independent depth-2 units:

* an FFN inner channel ``i``: row ``i`` of the gate/up projections with column ``i`` of the
  down projection;
* an attention head: its Q (and, per KV group, K/V) row block of ``head_dim`` rows, with the
  matching ``head_dim`` column block of the output projection.

An adapter knows, for one family of Hugging Face models, how to find the decoder layers and their
``nn.Linear`` modules, how to read each layer's unit structure (from the module shapes, so an
already pruned model with different sizes per layer reads correctly), and which module attributes
Hugging Face's forward reads and must be updated after slicing.

Adapters are kept in a small registry keyed by ``config.model_type``; :func:`get_adapter` picks
one for a model and raises a ``ValueError`` naming the supported architectures otherwise.  New
families (GPT-2, OPT, Gemma, BERT, ...) are added with :func:`register_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class HeadStructure:
    """Attention head layout of one layer: query heads, KV heads and the per-head width.

    Query head ``h`` reads KV head ``h // group_size`` (Hugging Face's ``repeat_kv`` order).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV group."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class LayerUnits:
    """The prunable units of one decoder layer: FFN channel count and attention head layout."""

    index: int
    ffn_units: int
    heads: HeadStructure


@dataclass(frozen=True)
class FFNLinears:
    """The gated FFN of one layer: ``down(act(gate(x)) * up(x))``."""

    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


@dataclass(frozen=True)
class AttnLinears:
    """The attention projections of one layer."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


class ArchitectureAdapter:
    """Base class: how to find and re-size the prunable modules of one model family."""

    #: ``config.model_type`` values this adapter handles (filled by :func:`register_adapter`).
    model_types: tuple[str, ...] = ()

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers of ``model``, in order."""
        raise NotImplementedError

    def ffn(self, layer: nn.Module) -> FFNLinears:
        """The FFN Linear modules of one decoder layer."""
        raise NotImplementedError

    def attention(self, layer: nn.Module) -> AttnLinears:
        """The attention Linear modules of one decoder layer."""
        raise NotImplementedError

    def head_structure(self, layer: nn.Module) -> HeadStructure:
        """The current head layout of one layer, read from its module shapes."""
        raise NotImplementedError

    def set_ffn_size(self, layer: nn.Module, ffn: FFNLinears) -> None:
        """Install re-sized FFN Linears in ``layer`` and update the attributes its forward reads."""
        raise NotImplementedError

    def set_attention(self, layer: nn.Module, attn: AttnLinears, heads: HeadStructure) -> None:
        """Install re-sized attention Linears and update the head counts its forward reads."""
        raise NotImplementedError

    def layer_units(self, model: nn.Module) -> list[LayerUnits]:
        """Per layer: the FFN channel count and the attention head structure."""
        return [LayerUnits(i, self.ffn(layer).gate.out_features, self.head_structure(layer))
                for i, layer in enumerate(self.layers(model))]


_REGISTRY: dict[str, type[ArchitectureAdapter]] = {}


def register_adapter(*model_types: str):
    """Class decorator: register an adapter for the given ``config.model_type`` values."""
    def deco(cls: type[ArchitectureAdapter]) -> type[ArchitectureAdapter]:
        cls.model_types = tuple(model_types)
        for t in model_types:
            _REGISTRY[t] = cls
        return cls
    return deco


def supported_architectures() -> list[str]:
    """The ``config.model_type`` values that have an adapter."""
    return sorted(_REGISTRY)


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model`` (chosen by ``model.config.model_type``).

    Raises ``ValueError`` naming the supported architectures when there is none, or when the
    model's module layout is not the one the adapter expects.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cls = _REGISTRY.get(model_type)
    if cls is None:
        raise ValueError(
            f"sketchprune.prune: unsupported architecture {model_type!r} ({type(model).__name__}); "
            f"supported model types: {', '.join(supported_architectures())}")
    adapter = cls()
    adapter.layers(model)  # checks the layout
    return adapter


def _decoder_stack(model: nn.Module) -> nn.Module:
    """``model.model`` for a ``*ForCausalLM`` (or similar head model), else ``model`` itself."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "layers") else model


def _replace(parent: nn.Module, name: str, new: nn.Module) -> None:
    setattr(parent, name, new)


@register_adapter("llama", "mistral", "qwen2")
class LlamaAdapter(ArchitectureAdapter):
    """Llama family (Llama, Mistral, Qwen2): ``model.model.layers[i]`` holding
    ``mlp.{gate_proj,up_proj,down_proj}`` and ``self_attn.{q_proj,k_proj,v_proj,o_proj}``
    (q/k/v biases optional, as in Qwen2).

    Hugging Face's attention forward reshapes with ``view(..., -1, head_dim)`` and reads only
    ``self_attn.num_key_value_groups`` and ``self_attn.head_dim`` from the module, so head counts
    may differ between layers once those module attributes are set (see :meth:`set_attention`).
    """

    def layers(self, model):
        stack = _decoder_stack(model)
        layers = getattr(stack, "layers", None)
        if layers is None or len(layers) == 0 or not all(
                hasattr(l, "mlp") and hasattr(l, "self_attn") for l in layers):
            raise ValueError(
                f"sketchprune.prune: {type(model).__name__} does not have the Llama module layout "
                "(model.model.layers[i].mlp / .self_attn)")
        return list(layers)

    def ffn(self, layer):
        m = layer.mlp
        return FFNLinears(m.gate_proj, m.up_proj, m.down_proj)

    def attention(self, layer):
        a = layer.self_attn
        return AttnLinears(a.q_proj, a.k_proj, a.v_proj, a.o_proj)

    def head_structure(self, layer):
        a = layer.self_attn
        hd = int(a.head_dim)
        nq, rem_q = divmod(a.q_proj.out_features, hd)
        nkv, rem_kv = divmod(a.k_proj.out_features, hd)
        if rem_q or rem_kv or nkv == 0 or nq % nkv or a.v_proj.out_features != a.k_proj.out_features \
                or a.o_proj.in_features != a.q_proj.out_features:
            raise ValueError(
                f"sketchprune.prune: inconsistent attention shapes in layer {a.layer_idx}: "
                f"q {a.q_proj.out_features}, k {a.k_proj.out_features}, v {a.v_proj.out_features}, "
                f"o in {a.o_proj.in_features}, head_dim {hd}")
        return HeadStructure(nq, nkv, hd)

    def set_ffn_size(self, layer, ffn):
        m = layer.mlp
        _replace(m, "gate_proj", ffn.gate)
        _replace(m, "up_proj", ffn.up)
        _replace(m, "down_proj", ffn.down)
        m.intermediate_size = ffn.gate.out_features

    def set_attention(self, layer, attn, heads):
        a = layer.self_attn
        for name, lin in (("q_proj", attn.q), ("k_proj", attn.k), ("v_proj", attn.v), ("o_proj", attn.o)):
            _replace(a, name, lin)
        # read by eager/sdpa/flex attention (repeat_kv / enable_gqa); per module, so per layer
        a.num_key_value_groups = heads.group_size
        # not read by the current forward; kept consistent for code that looks at them
        a.num_heads = heads.num_heads
        a.num_key_value_heads = heads.num_kv_heads
        a.head_dim = heads.head_dim
