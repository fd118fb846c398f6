"""The public op API.  Each op is registered once in the ``sketchprune`` torch.library
namespace (``torch.ops.sketchprune.<name>``, usable inside ``torch.compile``) with a fake
implementation and one kernel per device type that runs the backend the registry picks
(see ``sketchprune._backends``)."""

from .cov import cov_accumulate_, cross_accumulate_
from .gather import gather_slices
from .sketch import outer_sketch, sparse_sign_sketch

__all__ = ["cov_accumulate_", "cross_accumulate_", "sparse_sign_sketch", "outer_sketch", "gather_slices"]
