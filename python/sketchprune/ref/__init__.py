"""Pure-torch references: the test oracle and the last-resort backend."""

from .hash import MASK64, mix64_int, sketch_entries, sketch_entry_int, sketch_matrix
from .ops import (
    cov_accumulate_ref,
    cross_accumulate_ref,
    gather_slices_ref,
    outer_sketch_ref,
    sparse_sign_sketch_ref,
)

__all__ = [
    "MASK64",
    "mix64_int",
    "sketch_entry_int",
    "sketch_entries",
    "sketch_matrix",
    "cov_accumulate_ref",
    "cross_accumulate_ref",
    "sparse_sign_sketch_ref",
    "outer_sketch_ref",
    "gather_slices_ref",
]
