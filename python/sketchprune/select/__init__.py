"""Data selection.  This first step provides the moment-matching core of Sketchy Moment Matching
on a given gradient sketch (see ``moment_matching``): the capped-simplex solver with a certified
duality gap, exact-n rounding, and the variance proxy -- and the classic baselines
(``baselines``: uniform, herding, k-center, leverage, ridge leverage, adaptive sampling, GraNd,
EL2N, entropy, margin, least confidence), and the methods that read a trained model's outputs
through :class:`ModelOutputs` (``model_based``: forgetting events, contextual diversity, GLISTER,
DeepFool).  Gradient sources: ``sources`` (a user matrix) and ``gradients`` (a linear probe or the
last layers of a model)."""

from . import baselines, model_based
from .api import METHODS, select
from .model_based import ModelOutputs, correctness_record, deepfool_distances, deepfool_distances_model
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
    "model_based",
    "ModelOutputs",
    "correctness_record",
    "deepfool_distances",
    "deepfool_distances_model",
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
