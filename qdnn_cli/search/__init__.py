"""``qdnn search``: per-layer bit configurations under a cost budget, from a trained
quantizable model alone (no retraining).

Every candidate gives each quantized layer a weight and an activation bit-width from
the modes the model was trained in. A candidate is scored by top-1 on a slice of the
*training split* that the run did not train on (``data.build_holdout``), after its BN
statistics are re-estimated from training batches (slimmable networks' calibration);
the validation split is only used at the end, for the numbers a user reports.

Two strategies (``--strategy``):

* ``sensitivity`` measures, one layer at a time, how much each of its (weight,
  activation) settings moves the model away from the uniform mode the budget allows
  (the reference), treats those damages as additive, and allocates bits by an exact
  multiple-choice knapsack (dynamic programming over the budget); the allocation then
  seeds the evolutionary search below. ``sensitivity.csv`` keeps the measured table.
* ``evolution`` starts from the uniform modes that fit and random configurations
  repaired into the budget.

Both then breed by tournament selection, per-layer crossover and mutation (one step up
or down in the bit list), each child repaired to the budget and filled up to it.
``--candidates`` bounds the configurations evaluated after the sensitivity table;
``--seed`` makes the whole search repeatable.

What a candidate is judged by (``--metric``): ``kl``, the mean KL divergence of its
predictions from the full-precision mode's on the same images, or ``top1`` on the slice.
Top-1 on a few thousand images moves by about a point between two draws of the images,
more than the true differences between good configurations; the KL divergence is a
per-image, label-free difference measured on the same images for every candidate, so
it ranks configurations with far less noise (the winner's curse of picking the best of
many noisy scores is what made earlier top-1 searches lose on ``val/``).
"""
from .command import SearchOptions, search_mixed_precision
from .scoring import paired_comparison, reference_logprobs, score_against
from .sensitivity import allocate, measure_sensitivity, sensitivity_trials
from .space import Space

__all__ = ["SearchOptions", "search_mixed_precision", "Space", "allocate", "measure_sensitivity",
           "sensitivity_trials", "paired_comparison", "reference_logprobs", "score_against"]
