"""Layer-wise relevance propagation with Zennit's rules and composites.

References:
  Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
  Relevance Propagation", PLoS ONE 2015. https://doi.org/10.1371/journal.pone.0130140
  Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019.
  Kohlbrenner et al., "Towards Best Practice in Explaining Neural Network Decisions with LRP",
  IJCNN 2020 (the epsilon-plus-flat and epsilon-gamma-box composites).
  Anders et al., Zennit, 2021. https://github.com/chr-peters/zennit
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxplain.attribution import rules as R
from jaxplain.attribution._common import check_call, select
from jaxplain.attribution.registry import register

__all__ = ["lrp", "COMPOSITES", "RULES"]

# Zennit's composites (snake case, as zennit registers them) and single rules everywhere.
COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat")
RULES = ("epsilon", "gamma", "z_plus", "alpha_beta", "flat", "w_square")


@dataclasses.dataclass(frozen=True)
class _Composite:
  """Maps a linear layer (kind, index, index among its kind) to its rule, as Zennit's
  ``LayerMapComposite``/``SpecialFirstLayerMapComposite`` do; average pools get ``Norm``."""

  name: str
  epsilon: float
  gamma: float
  stabilizer: float
  alpha: float
  beta: float
  low: float
  high: float

  def __call__(self, kind: str, index: int, kind_index: int):
    st = self.stabilizer
    if kind == "pool":
      return R.Norm(st)
    dense = R.Epsilon(self.epsilon)
    single = {"epsilon": dense, "gamma": R.Gamma(self.gamma, st), "z_plus": R.ZPlus(st),
              "alpha_beta": R.AlphaBeta(self.alpha, self.beta, st), "flat": R.Flat(st),
              "w_square": R.WSquare(st)}
    if self.name in single:
      return single[self.name]
    if self.name.endswith("_flat") and index == 0:  # first conv or dense layer
      return R.Flat(st)
    if self.name == "epsilon_gamma_box" and kind == "conv" and kind_index == 0:
      return R.ZBox(self.low, self.high, st)
    if kind == "dense":
      return dense
    if self.name == "epsilon_gamma_box":
      return R.Gamma(self.gamma, st)
    if self.name.startswith("epsilon_alpha2_beta1"):
      return R.AlphaBeta(2.0, 1.0, st)
    return R.ZPlus(st)


@functools.partial(jax.jit, static_argnames=("ruleset",))
def _lrp(forward, inputs, target, *, ruleset):
  def total(x):
    return jnp.sum(select(R.modified(forward, x, ruleset), target))
  return jax.grad(total)(inputs)


def _number(value, name, *, positive=False):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or \
      (positive and not value > 0) or (not positive and not value >= 0):
    raise ValueError(f"`{name}` must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
  return float(value)


@register("lrp", kind="modified-backward", signed=True, label="LRP")
def lrp(forward, inputs, target, *, composite: str = "epsilon_plus_flat", epsilon: float = 1e-6,
        gamma: float = 0.25, stabilizer: float = 1e-6, alpha: float = 2.0, beta: float = 1.0,
        low: float = 0.0, high: float = 1.0):
  """Layer-wise relevance propagation of the target class (Zennit's rules and composites).

  The relevance starts as the one-hot target at the output (Zennit's ``attr_output``) and is
  passed down layer by layer (:mod:`jaxplain.attribution.rules`): each conv or dense layer, with
  its bias and any BatchNorm after it merged in (Zennit's ``MergeBatchNorm`` canonizers), uses the
  rule ``composite`` gives it; ReLU, sigmoid and tanh pass relevance unchanged (Zennit ``Pass``);
  average pooling uses ``Norm``; max pooling, reshapes, padding, global means and the input
  normalisation keep their gradient, as in Zennit.

  Composites (Zennit's, in snake case):

  * ``"epsilon_plus_flat"``: flat on the first conv/dense layer, z⁺ on convs, ε on dense layers;
  * ``"epsilon_gamma_box"``: zᴮ (``low``..``high``) on the first conv, γ on convs, ε on dense;
  * ``"epsilon_plus"``: z⁺ on convs, ε on dense; ``"epsilon_alpha2_beta1"``: α2β1 on convs, ε
    on dense; ``"epsilon_alpha2_beta1_flat"``: as that, flat on the first layer;
  * single rules on every conv and dense layer: ``"epsilon"``, ``"gamma"``, ``"z_plus"``,
    ``"alpha_beta"``, ``"flat"``, ``"w_square"``.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits (a ``Classifier``, ``classifier.forward``, a
      converted PyTorch model's forward or any function of convs, matmuls and activations).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    composite: a name of :data:`COMPOSITES` or :data:`RULES`. Static.
    epsilon: ε of the ε rule (Zennit ``epsilon``).
    gamma: γ of the γ rule.
    stabilizer: the small number every other rule adds to its denominators.
    alpha, beta: of the ``"alpha_beta"`` rule (``alpha − beta = 1``).
    low, high: the zᴮ rule's bounds in input units (jaxplain images: 0 and 1); the forward's own
      normalisation maps them to the first layer's input.

  Returns:
    Relevance of the shape and dtype of ``inputs``; with ε-like rules it sums to about 1 (the
    target's one-hot relevance), less what biases absorb.
  """
  if composite not in COMPOSITES + RULES:
    raise ValueError(f"`composite` must be one of {COMPOSITES + RULES}, got {composite!r}")
  forward, inputs, target = check_call(forward, inputs, target)
  alpha, beta = _number(alpha, "alpha"), _number(beta, "beta")
  if composite == "alpha_beta" and abs(alpha - beta - 1) > 1e-12:
    raise ValueError(f"`alpha` - `beta` must be 1 (Zennit's AlphaBeta), got {alpha} - {beta}")
  if not high > low:
    raise ValueError(f"`high` ({high!r}) must exceed `low` ({low!r})")
  layers = _Composite(composite, _number(epsilon, "epsilon"), _number(gamma, "gamma"),
                      _number(stabilizer, "stabilizer", positive=True), alpha, beta,
                      float(low), float(high))
  ruleset = R.RuleSet(relu="pass", other_activations="pass", max_pool="gradient", layers=layers)
  return _lrp(forward, inputs, target, ruleset=ruleset)
