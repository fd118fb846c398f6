"""sketchprune: distribution-aware data selection and structured pruning on fast kernels.

Ops (``sketchprune.ops``, also ``torch.ops.sketchprune.*``): ``cov_accumulate_``,
``cross_accumulate_``, ``sparse_sign_sketch``, ``outer_sketch``, ``gather_slices``.

Entry points: ``sketchprune.prune(model, calib, sparsity=..., ...)`` -> (pruned model, report)
(:func:`sketchprune.prune.api.prune`) and ``sketchprune.select(n, method, sketch, ...)`` ->
Selection (:func:`sketchprune.select.api.select`); ``sketchprune.load_pruned(dir)`` restores a saved
pruned model.  ``sketchprune.prune`` and
``sketchprune.select`` are also the subpackages (``from sketchprune.prune import prune_model``
keeps working): the two package modules are made callable, forwarding to those functions.
"""

import sys as _sys
import types as _types

from . import ops
from ._backends import BACKENDS, BackendUnavailableError, use_backend
from .accumulator import CovarianceAccumulator
from .budget import Budget, BudgetError, limit_memory
from .ops import cov_accumulate_, cross_accumulate_, gather_slices, outer_sketch, sparse_sign_sketch

__version__ = "0.1.0"


class _CallableModule(_types.ModuleType):
    """A package module that can be called: ``module(*args)`` -> ``module.__entry__(*args)``."""

    def __call__(self, *args, **kwargs):
        return self.__entry__()(*args, **kwargs)


def _prune_entry():
    from .prune.api import prune as entry

    return entry


def _select_entry():
    from .select.api import select as entry

    return entry


def _make_callable(name, entry):
    mod = _sys.modules[name]
    mod.__class__ = _CallableModule
    mod.__entry__ = entry
    return mod


from . import prune as _prune_pkg  # noqa: E402  (after the ops it builds on)
from . import select as _select_pkg  # noqa: E402

prune = _make_callable(_prune_pkg.__name__, _prune_entry)
select = _make_callable(_select_pkg.__name__, _select_entry)
load_pruned = _prune_pkg.load_pruned   # restores a saved pruned model (any per-layer widths)

__all__ = [
    "prune",
    "select",
    "load_pruned",
    "ops",
    "BACKENDS",
    "BackendUnavailableError",
    "use_backend",
    "CovarianceAccumulator",
    "Budget",
    "BudgetError",
    "limit_memory",
    "cov_accumulate_",
    "cross_accumulate_",
    "sparse_sign_sketch",
    "outer_sketch",
    "gather_slices",
]
