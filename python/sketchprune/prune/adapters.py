"""Architecture adapters: where the prunable depth-2 units of a transformer live.

A transformer block holds two kinds of independent depth-2 units:

* an FFN inner channel ``i``: row ``i`` of the first projection(s) -- gate and up for a gated
  FFN (``down(act(gate x) * up x)``), the single up projection for a plain one
  (``down(act(up x))``, OPT's ``fc1``/``fc2``, BERT's ``intermediate``/``output``) -- with column
  ``i`` of the down projection;
* an attention head: its Q (and, per KV group, K/V) row block of ``head_dim`` rows, with the
  matching ``head_dim`` column block of the output projection.

An adapter knows, for one family of Hugging Face models, how to find the decoder (or encoder)
layers and their ``nn.Linear`` modules, how to read each layer's unit structure (from the module
shapes, so an already pruned model with different sizes per layer reads correctly), which module
attributes Hugging Face's forward reads and must be updated after slicing, and which stock config
fields can describe a model whose layers all have the same sizes.

Adapters are kept in a small registry keyed by ``config.model_type``; :func:`get_adapter` picks
one for a model and raises a ``ValueError`` naming the supported architectures otherwise.  New
families are added with :func:`register_adapter`.  Supported: the Llama family (``llama``,
``mistral``, ``qwen2``), Gemma 2 / Gemma 3 text models (``gemma2``, ``gemma3_text``), OPT
(``opt``) and BERT encoders (``bert``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn



def layer_indices(n_layers: int, layers=None) -> list[int]:
    """The sorted, distinct decoder-layer indices a pruning step works on (default: all of the
    ``n_layers``); raises ``IndexError`` naming any index out of range."""
    idx = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
    bad = [i for i in idx if not 0 <= i < n_layers]
    if bad:
        raise IndexError(f"sketchprune.prune: layers {bad} out of range (model has {n_layers})")
    return idx

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
    """The FFN of one layer: ``down(act(gate(x)) * up(x))`` when gated, ``down(act(up(x)))``
    when ``gate`` is ``None``."""

    gate: nn.Linear | None
    up: nn.Linear
    down: nn.Linear

    @property
    def units(self) -> int:
        """The number of FFN channels (rows of up, columns of down)."""
        return self.up.out_features

    @property
    def first(self) -> tuple[nn.Linear, ...]:
        """The first-half Linears whose rows are the channels: (gate, up), or (up,) if not gated."""
        return (self.up,) if self.gate is None else (self.gate, self.up)


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
    #: a causal (decoder-only) family: its LM head predicts the next token (else: an encoder,
    #: whose masked-LM head predicts the token at the same position)
    causal: bool = True

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
        return [LayerUnits(i, self.ffn(layer).units, self.head_structure(layer))
                for i, layer in enumerate(self.layers(model))]

    #: our per-layer size keys (see ``record_structure``) -> the stock config field holding it;
    #: a key without a stock field (no GQA in the family) is left out
    config_fields: dict[str, str] = {}
    #: whether the modelling code reads an explicit ``config.head_dim`` (else it derives
    #: ``hidden_size // num_attention_heads``)
    explicit_head_dim: bool = False

    def stock_config(self, config, sizes: dict, head_dim: int) -> dict | None:
        """The stock config fields that describe a model whose layers all have ``sizes``
        (``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``) and per-head
        width ``head_dim``, or ``None`` when the stock config cannot describe it.

        Hugging Face configs reject ``hidden_size`` not divisible by ``num_attention_heads``
        (even with an explicit ``head_dim``), and where the modelling code derives the head width
        from ``hidden_size // num_attention_heads`` the head count cannot change at all.
        """
        heads = sizes["num_attention_heads"]
        if config.hidden_size % heads:
            return None
        if not self.explicit_head_dim and config.hidden_size // heads != head_dim:
            return None
        if "num_key_value_heads" not in self.config_fields and sizes["num_key_value_heads"] != heads:
            return None
        out = {self.config_fields[k]: v for k, v in sizes.items() if k in self.config_fields}
        if self.explicit_head_dim:
            out["head_dim"] = head_dim
        return out


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


def _base_model(model: nn.Module) -> nn.Module:
    """The bare transformer inside a head model (Hugging Face's ``base_model_prefix``), else ``model``."""
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) else model


def _require_gate(adapter: ArchitectureAdapter, ffn: FFNLinears, gated: bool) -> None:
    if (ffn.gate is not None) != gated:
        raise ValueError(f"sketchprune.prune: {type(adapter).__name__} expects "
                         f"{'a gated FFN (gate, up, down)' if gated else 'a plain FFN without gate'}")


def _check_head_shapes(where, hd: int, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear,
                       one_kv_per_query: str | None = None) -> HeadStructure:
    """The head structure implied by the q/k/v/o shapes and ``head_dim``, or a clear error.

    ``one_kv_per_query``: the family's name when its attention has no grouped KV heads (OPT,
    BERT): then as many KV heads as query heads are required."""
    nq, rem_q = divmod(q.out_features, hd)
    nkv, rem_kv = divmod(k.out_features, hd)
    if rem_q or rem_kv or nkv == 0 or nq % nkv or v.out_features != k.out_features \
            or o.in_features != q.out_features:
        raise ValueError(
            f"sketchprune.prune: inconsistent attention shapes in layer {where}: "
            f"q {q.out_features}, k {k.out_features}, v {v.out_features}, "
            f"o in {o.in_features}, head_dim {hd}")
    if one_kv_per_query is not None and nkv != nq:
        raise ValueError(f"sketchprune.prune: {one_kv_per_query} layer {where} has {nq} query heads but {nkv} "
                         f"key/value heads; {one_kv_per_query} attention has one key/value head per query head")
    return HeadStructure(nq, nkv, hd)


#: the hook tables of an nn.Module (those this torch has are moved; handles keep working on them)
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
                "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_pre_hooks",
                "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _replace(parent: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` (a sliced Linear) in place of ``parent.name``, moving the hooks registered on the
    old module to it (the same tables, so the caller's handles still remove them)."""
    old = getattr(parent, name, None)
    if isinstance(old, nn.Module) and old is not new:
        for attr in _HOOK_TABLES:
            if hasattr(old, attr):
                setattr(new, attr, getattr(old, attr))
        if getattr(old, "_is_full_backward_hook", None) is not None:
            new._is_full_backward_hook = old._is_full_backward_hook
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

    config_fields = {"intermediate_size": "intermediate_size", "num_attention_heads": "num_attention_heads",
                     "num_key_value_heads": "num_key_value_heads"}
    explicit_head_dim = True

    def head_structure(self, layer):
        a = layer.self_attn
        return _check_head_shapes(a.layer_idx, int(a.head_dim), a.q_proj, a.k_proj, a.v_proj, a.o_proj)

    def set_ffn_size(self, layer, ffn):
        _require_gate(self, ffn, True)
        m = layer.mlp
        _replace(m, "gate_proj", ffn.gate)
        _replace(m, "up_proj", ffn.up)
        _replace(m, "down_proj", ffn.down)
        m.intermediate_size = ffn.units

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


@register_adapter("gemma2", "gemma3_text")
class GemmaAdapter(LlamaAdapter):
    """Gemma 2 and Gemma 3 text models (``Gemma2ForCausalLM``, ``Gemma3ForCausalLM``,
    ``Gemma3TextModel``): the Llama module layout with a GeGLU FFN, an explicit
    ``config.head_dim`` (not ``hidden_size // num_attention_heads``), local sliding-window layers
    and, in Gemma 3, RMS norms ``self_attn.q_norm`` / ``k_norm`` over ``head_dim``.

    The attention forward reshapes with ``view(..., -1, head_dim)`` and reads only
    ``num_key_value_groups``, ``head_dim``, ``scaling`` (from ``query_pre_attn_scalar``, not the
    head count) and ``sliding_window`` from the module; the q/k norms act within each head with
    weights shared by all heads, so slicing whole heads leaves them as they are.  The multimodal
    ``gemma3`` (``Gemma3ForConditionalGeneration``) is not covered.
    """

    def head_structure(self, layer):
        hs = super().head_structure(layer)
        a = layer.self_attn
        for name in ("q_norm", "k_norm"):
            norm = getattr(a, name, None)
            w = getattr(norm, "weight", None)
            if w is not None and tuple(w.shape) != (hs.head_dim,):
                raise ValueError(f"sketchprune.prune: {name} of layer {a.layer_idx} has shape {tuple(w.shape)}; "
                                 f"expected one weight per head_dim ({hs.head_dim}) shared by all heads")
        return hs


@register_adapter("opt")
class OPTAdapter(ArchitectureAdapter):
    """OPT (``OPTForCausalLM``, ``OPTModel``): ``base.decoder.layers[i]`` holding
    ``self_attn.{q_proj,k_proj,v_proj,out_proj}`` and a plain FFN ``fc1 -> act -> fc2`` directly
    on the layer, all with biases; no GQA (one KV head per query head).

    The attention forward reshapes with ``view(bsz, -1, self.num_heads, self.head_dim)``, so
    ``self_attn.num_heads`` is set per layer.  ``head_dim`` (and the ``head_dim ** -0.5`` query
    scaling) is fixed at construction from ``hidden_size // num_attention_heads``, so after head
    pruning the stock config cannot describe the model: ``config.num_attention_heads`` keeps its
    value and :func:`~sketchprune.prune.load_pruned` restores the per-layer sizes.  Uniform FFN
    pruning alone updates ``config.ffn_dim`` and loads with the stock ``from_pretrained``.
    """

    config_fields = {"intermediate_size": "ffn_dim", "num_attention_heads": "num_attention_heads"}

    def layers(self, model):
        decoder = getattr(_base_model(model), "decoder", None)
        layers = getattr(decoder, "layers", None)
        if layers is None or len(layers) == 0 or not all(
                hasattr(l, "self_attn") and hasattr(l, "fc1") and hasattr(l, "fc2") for l in layers):
            raise ValueError(
                f"sketchprune.prune: {type(model).__name__} does not have the OPT module layout "
                "(decoder.layers[i].self_attn / .fc1 / .fc2)")
        return list(layers)

    def ffn(self, layer):
        return FFNLinears(None, layer.fc1, layer.fc2)

    def attention(self, layer):
        a = layer.self_attn
        return AttnLinears(a.q_proj, a.k_proj, a.v_proj, a.out_proj)

    def head_structure(self, layer):
        a = layer.self_attn
        return _check_head_shapes(a.layer_idx, int(a.head_dim), a.q_proj, a.k_proj, a.v_proj, a.out_proj, "OPT")

    def set_ffn_size(self, layer, ffn):
        _require_gate(self, ffn, False)
        _replace(layer, "fc1", ffn.up)
        _replace(layer, "fc2", ffn.down)

    def set_attention(self, layer, attn, heads):
        if heads.num_kv_heads != heads.num_heads:
            raise ValueError(f"sketchprune.prune: OPT needs as many KV heads as query heads, got {heads}")
        a = layer.self_attn
        for name, lin in (("q_proj", attn.q), ("k_proj", attn.k), ("v_proj", attn.v), ("out_proj", attn.o)):
            _replace(a, name, lin)
        a.num_heads = heads.num_heads  # read by the forward's reshapes


@register_adapter("bert")
class BertAdapter(ArchitectureAdapter):
    """BERT encoders (``BertModel`` -- e.g. all-MiniLM-L6-v2 --, ``BertForMaskedLM``, ...):
    ``base.encoder.layer[i]`` holding ``attention.self.{query,key,value}``,
    ``attention.output.dense`` and the plain FFN ``intermediate.dense -> act -> output.dense``,
    all with biases; no GQA.  Cross-attention (BERT as a decoder) is left untouched.

    The self-attention forward reshapes with ``view(..., -1, attention_head_size)``;
    ``num_attention_heads`` and ``all_head_size`` are set per layer as well to keep the module
    consistent.  ``attention_head_size`` (and the scaling) come from
    ``hidden_size // num_attention_heads`` at construction, so, as for OPT, after head pruning
    the stock config keeps its head count and :func:`~sketchprune.prune.load_pruned` restores
    the per-layer sizes; uniform FFN pruning alone loads with the stock ``from_pretrained``.
    """

    config_fields = {"intermediate_size": "intermediate_size", "num_attention_heads": "num_attention_heads"}
    causal = False

    def layers(self, model):
        encoder = getattr(_base_model(model), "encoder", None)
        layers = getattr(encoder, "layer", None)
        if layers is None or len(layers) == 0 or not all(
                hasattr(l, "attention") and hasattr(l.attention, "self") and hasattr(l, "intermediate")
                and hasattr(l, "output") for l in layers):
            raise ValueError(
                f"sketchprune.prune: {type(model).__name__} does not have the BERT module layout "
                "(encoder.layer[i].attention.self / .attention.output / .intermediate / .output)")
        return list(layers)

    def ffn(self, layer):
        return FFNLinears(None, layer.intermediate.dense, layer.output.dense)

    def attention(self, layer):
        s = layer.attention.self
        return AttnLinears(s.query, s.key, s.value, layer.attention.output.dense)

    def head_structure(self, layer):
        s = layer.attention.self
        return _check_head_shapes(s.layer_idx, int(s.attention_head_size), s.query, s.key, s.value,
                                  layer.attention.output.dense, "BERT")

    def set_ffn_size(self, layer, ffn):
        _require_gate(self, ffn, False)
        _replace(layer.intermediate, "dense", ffn.up)
        _replace(layer.output, "dense", ffn.down)

    def set_attention(self, layer, attn, heads):
        if heads.num_kv_heads != heads.num_heads:
            raise ValueError(f"sketchprune.prune: BERT needs as many key/value heads as query heads, got {heads}")
        s = layer.attention.self
        for name, lin in (("query", attn.q), ("key", attn.k), ("value", attn.v)):
            _replace(s, name, lin)
        _replace(layer.attention.output, "dense", attn.o)
        s.num_attention_heads = heads.num_heads
        s.all_head_size = heads.num_heads * heads.head_dim
