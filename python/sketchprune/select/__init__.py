"""Data selection.  This first step provides the moment-matching core of Sketchy Moment Matching
on a given gradient sketch (see ``moment_matching``): the capped-simplex solver with a certified
duality gap, exact-n rounding, and the variance proxy -- and the classic baselines
(``baselines``: uniform, herding, k-center, leverage, ridge leverage, adaptive sampling, GraNd,
EL2N, entropy, margin, least confidence).  Gradient sources and the experiments build on it."""

from . import baselines
from .api import METHODS, select
from .moment_matching import MomentProblem, MomentSolution, moment_problem, solve_moment_matching
from .rounding import round_weights
from .simplex import lmo_capped_simplex, project_capped_simplex
from .skmm import Selection, skmm_select, variance_proxy
from .gradients import linear_probe_sketch, model_gradient_sketch
from .sources import intrinsic_dimension, sketch_matrix

__all__ = [
    "select",
    "METHODS",
    "baselines",
    "MomentProblem",
    "MomentSolution",
    "moment_problem",
    "solve_moment_matching",
    "round_weights",
    "project_capped_simplex",
    "lmo_capped_simplex",
    "Selection",
    "skmm_select",
    "variance_proxy",
    "sketch_matrix",
    "intrinsic_dimension",
    "linear_probe_sketch",
    "model_gradient_sketch",
]
