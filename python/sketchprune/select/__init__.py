"""Data selection.  This first step provides the moment-matching core of Sketchy Moment Matching
on a given gradient sketch (see ``moment_matching``): the capped-simplex solver with a certified
duality gap, exact-n rounding, and the variance proxy.  Gradient sources and the baseline methods
build on it."""

from .moment_matching import MomentProblem, MomentSolution, moment_problem, solve_moment_matching
from .rounding import round_weights
from .simplex import lmo_capped_simplex, project_capped_simplex
from .skmm import Selection, skmm_select, variance_proxy

__all__ = [
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
]
