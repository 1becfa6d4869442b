"""Evaluation metrics for explanations: is a map faithful, robust, model-dependent, simple?

Every metric is a pure function over a batch with the shared signature
``metric(forward, inputs, target, attributions, *, key=None, **options) -> (N,) scores`` (or a
:class:`Curve` when there is one); randomisation metrics take the method instead of its maps:
``metric(method, classifier, inputs, target, *, key, ...)``. Each reproduces the Quantus 0.6
metric of the same name (its option names and defaults; its docstring says where it differs),
``infidelity`` and ``sensitivity_max`` reproduce Captum's. Perturbed copies are evaluated in
fixed-size chunks of jit-compiled model calls (see :mod:`~jaxplain.metrics.faithfulness`).

Families: :mod:`~jaxplain.metrics.faithfulness`, :mod:`~jaxplain.metrics.robustness`,
:mod:`~jaxplain.metrics.randomisation`, :mod:`~jaxplain.metrics.complexity_family`,
:mod:`~jaxplain.metrics.axiomatic`, :mod:`~jaxplain.metrics.localisation`;
:func:`evaluate_methods` builds the per-method table of the report.
"""

from __future__ import annotations

from jaxplain.metrics._common import Curve, auc, pearson, spearman, ssim
from jaxplain.metrics.axiomatic import completeness_gap, input_invariance, non_sensitivity
from jaxplain.metrics.complexity_family import complexity, effective_complexity, sparseness
from jaxplain.metrics.evaluate import (METRICS, Table, deletion_curves, evaluate_methods,
                                       sanity_check)
from jaxplain.metrics.faithfulness import (faithfulness_correlation, infidelity, insertion,
                                           monotonicity_correlation, pixel_flipping,
                                           region_perturbation, road)
from jaxplain.metrics.localisation import face_bands, region_share
from jaxplain.metrics.randomisation import (Randomisation, model_parameter_randomisation,
                                            random_logit, randomised_classifiers,
                                            randomised_maps, similarity)
from jaxplain.metrics.robustness import (avg_sensitivity, local_lipschitz_estimate,
                                         max_sensitivity, sensitivity_max)

__all__ = [
    "METRICS",
    "Curve",
    "Randomisation",
    "Table",
    "auc",
    "avg_sensitivity",
    "completeness_gap",
    "complexity",
    "deletion_curves",
    "effective_complexity",
    "evaluate_methods",
    "face_bands",
    "faithfulness_correlation",
    "infidelity",
    "input_invariance",
    "insertion",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "model_parameter_randomisation",
    "monotonicity_correlation",
    "non_sensitivity",
    "pearson",
    "pixel_flipping",
    "random_logit",
    "randomised_classifiers",
    "randomised_maps",
    "region_perturbation",
    "region_share",
    "road",
    "sanity_check",
    "sensitivity_max",
    "similarity",
    "spearman",
    "sparseness",
    "ssim",
]
