"""sketchprune: distribution-aware data selection and structured pruning on fast kernels.

Ops (``sketchprune.ops``, also ``torch.ops.sketchprune.*``): ``cov_accumulate_``,
``cross_accumulate_``, ``sparse_sign_sketch``, ``outer_sketch``, ``gather_slices``.
"""

from . import ops
from ._backends import BACKENDS, BackendUnavailableError, use_backend
from .accumulator import CovarianceAccumulator
from .budget import Budget, BudgetError, limit_memory
from .ops import cov_accumulate_, cross_accumulate_, gather_slices, outer_sketch, sparse_sign_sketch

__version__ = "0.1.0"

__all__ = [
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
