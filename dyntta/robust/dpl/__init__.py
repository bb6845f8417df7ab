"""DPL: Deep Perturbation Learning (Song et al., ICML 2023).

Influence functions (Koh & Liang) tell which additive pixel perturbation of each training image most
lowers the loss on a guide set G. They assume a converged model, so the amendment runs once, at the start
of training, on the model training starts from: a converged recognizer given with ``--init`` (a starting
model near chance is refused). Several rounds are several fine-tunes, each starting from the previous
one's annealed result (``--init`` of the previous output). Because the amended set exists before the
optimizer is built, the learning-rate schedule's step count covers it.

    s   = (H + lambda I)^-1 grad_theta R_G(theta)     H: training-loss Hessian on ``hvp_images`` images,
                                                      lambda = ``damping`` x its largest eigenvalue
    u_i = s . grad_theta L(z_i)                       up-weighting influence
    v_i = grad_x u_i                                  both: a JVP along s, then one input gradient (torch.func)
    x_i' = x_i + delta_i,  delta_i = alpha v_i        (``normalize``: alpha v_i / max|v_i|, alpha in pixels)
    Delta_i = (u_i + delta_i . v_i) / N               predicted decrease of R_G when (x_i', y_i) is added

The ``fraction`` (epsilon) * N original samples with the largest positive Delta_i are added to the training
set (augmentation mode). Perturbations are computed on the un-augmented [0, 1] pixels that the amended set
stores (the recognizer normalises inside), so they are applied in the space they were computed in. HVPs and
gradients use BatchNorm in eval mode, which keeps samples independent.

Cost: every derivative is taken with BatchNorm folded into the preceding convolutions (eval mode: the same
function of the same parameters, a third cheaper on CPU), HVPs and influences as reverse mode over a
forward-mode derivative (no weight gradients where none are needed), and the guide set's gradient, loss and
accuracy in one pass (``benchmarks/dpl_amendment.py`` measures all of it against an ERM epoch). Under
torchrun the guide chunks, Hessian chunks and candidate batches are shared out between ranks (item k on rank
k % world) and combined in the single-process order, so each rank does ~1/N of the work and every rank ends
with the single-process solve, scores and amended set, bit for bit (same threads and kernels).

One module per job; each imports only modules above it in this list:

    vectors    vector algebra over parameter lists (``Vector``: one tensor per trainable parameter)
    folding    BatchNorm folded into the preceding convolutions, for every derivative
    objective  the loss of the parameters: guide gradient / loss / accuracy, mean loss, whole-network HVPs
    head       the linear classifier head: its features and its Hessian (``influence_params="head"``)
    solve      the inverse-HVP solve (MINRES, LiSSA), its power-iteration damping and its record
    scoring    the per-sample influence (u_i, v_i) and the ranking of perturbed candidates
    strategy   the ``DPL`` TrainingStrategy: guide set, amendment, resume
"""

from __future__ import annotations

from dyntta.robust.dpl.head import classifier_head, head_features, head_hessian_operator
from dyntta.robust.dpl.objective import LossFn, accuracy, guide_statistics, hessian_operator, mean_gradient, mean_loss
from dyntta.robust.dpl.scoring import influence
from dyntta.robust.dpl.solve import (
    SOLVE_DEFAULTS,
    SOLVERS,
    SolveDefaults,
    SolveRecord,
    solve_inverse_hvp,
    top_eigenvalue,
)
from dyntta.robust.dpl.strategy import DPL, INFLUENCE_PARAMS
from dyntta.robust.dpl.vectors import Vector

__all__ = [
    "DPL",
    "INFLUENCE_PARAMS",
    "SOLVERS",
    "SOLVE_DEFAULTS",
    "LossFn",
    "SolveDefaults",
    "SolveRecord",
    "Vector",
    "accuracy",
    "classifier_head",
    "guide_statistics",
    "head_features",
    "head_hessian_operator",
    "hessian_operator",
    "influence",
    "mean_gradient",
    "mean_loss",
    "solve_inverse_hvp",
    "top_eigenvalue",
]
