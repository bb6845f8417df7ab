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

The inverse-Hessian product is solved to a recorded tolerance on a fixed sample of training images, with
MINRES (``solver="minres"``, default) or the paper's LiSSA recursion (``solver="lissa"``,
h <- v + (1 - lambda/scale) h - H h / scale, s = h / scale, run until the same residual is reached or
``max_iterations``). Both aim at (H + lambda I)^-1 v. The Hessian of a trained network is indefinite:
LiSSA (and conjugate gradients) then diverge unless lambda exceeds the most negative eigenvalue, while
MINRES minimises the residual over its Krylov space whatever the signs, in far fewer HVPs. The record
kept in the checkpoint's strategy description holds the effective damping lambda and the undamped
residual ||H s - grad R_G|| / ||grad R_G|| (target < 0.1).

Which parameters theta is (``influence_params``): ``head`` (default), the final linear classifier only, as
Koh & Liang do for deep networks (their Inception experiments); ``all``, every trainable parameter. With the
head, H is a softmax regression's Hessian on the pre-logit features: positive semi-definite, computed on
cached features of ``hvp_images`` training images (no product runs the network again) and solved to a
tight tolerance in seconds; the independent residual is checked on as many other images, and v_i is still
the gradient through the whole network. With all parameters, every HVP runs the network: on one CPU core for the default
recognizer MINRES stopped at its 100-iteration cap with residual 0.34 on its 512-image sample and 1.2 on an
independent one (docs/RESULTS.md): an inverse of 512 images' curvature, not the training set's.

The guide set is the first ``guide_fraction`` of the (already shuffled) training split; with
``guide_holdout`` it is held out of training, otherwise it is also trained on (as in the official code).

Cost: every derivative is taken with BatchNorm folded into the preceding convolutions (eval mode: the same
function of the same parameters, a third cheaper on CPU), HVPs and influences as reverse mode over a
forward-mode derivative (no weight gradients where none are needed), and the guide set's gradient, loss and
accuracy in one pass (``benchmarks/dpl_amendment.py`` measures all of it against an ERM epoch). Under
torchrun the guide chunks, Hessian chunks and candidate batches are shared out between ranks (item k on rank
k % world) and combined in the single-process order, so each rank does ~1/N of the work and every rank ends
with the single-process solve, scores and amended set, bit for bit (same threads and kernels). The amended
set is kept in ``train_state.pt`` (:meth:`DPL.state_dict`), so a resumed run does not amend again.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from tqdm import tqdm

from dyntta import distributed
from dyntta.data import LabelledImages, to_float
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy

SOLVERS = ("minres", "lissa")
INFLUENCE_PARAMS = ("head", "all")
Vector = list[torch.Tensor]
LossFn = Callable[..., torch.Tensor]  # (logits, labels, reduction=...) -> loss


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def _norm(a: Vector) -> float:
    return _dot(a, a).sqrt().item()


def _axpy(alpha: float | torch.Tensor, x: Vector, y: Vector) -> Vector:
    """alpha x + y."""
    return [alpha * a + b for a, b in zip(x, y, strict=True)]


def _flat(vector: Vector) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vector])


def _unflat(flat: torch.Tensor, like: Vector) -> Vector:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def _chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Fixed chunk boundaries: every rank and the single process cut the data the same way, so each chunk's
    result is the same bit for bit wherever it is computed."""
    return [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def _fold_batchnorm(model: nn.Module) -> tuple[nn.Module, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]:
    """An eval-mode model with every Conv2d -> BatchNorm2d pair folded into one biased convolution, and the
    map from the original parameters to the folded ones (differentiable, so gradients, HVPs and JVPs with
    respect to the original parameters, BatchNorm's included, are exact).

    In eval mode BatchNorm is the affine map a x + b; folding removes it, and with it about a third of the
    time of influence and HVP batches on CPU (measured on resnet18_half). Models that torch.fx cannot trace,
    and pairs it cannot fold (shared conv outputs, BatchNorm subclasses, batch statistics), stay as they are.
    """

    def identity(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return params

    if model.training:
        return model, identity
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception:  # any untraceable model is used as it is  # noqa: BLE001
        return model, identity
    modules = dict(traced.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in list(traced.graph.nodes):
        bn = modules.get(str(node.target)) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if type(bn) is not nn.BatchNorm2d or not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        conv = modules.get(str(source.target))
        if type(conv) is not nn.Conv2d or len(source.users) != 1 or bn.running_var is None or not bn.affine:
            continue
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        pairs.append((str(source.target), str(node.target)))
    if not pairs:
        return model, identity
    traced.graph.lint()
    traced.recompile()
    # values of whatever is not trained (frozen parameters) and BatchNorm's statistics, from the model
    fixed = {n: t.detach() for n, t in traced.named_parameters()}
    fixed |= {n: t.detach() for n, t in traced.named_buffers()}
    eps = {bn_name: modules[bn_name].eps for _, bn_name in pairs}

    def fold(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(params)
        for conv_name, bn_name in pairs:
            mean, var = fixed[f"{bn_name}.running_mean"], fixed[f"{bn_name}.running_var"]
            scale = out.pop(f"{bn_name}.weight", fixed[f"{bn_name}.weight"]) / torch.sqrt(var + eps[bn_name])
            shift = out.pop(f"{bn_name}.bias", fixed[f"{bn_name}.bias"])
            weight = out.get(f"{conv_name}.weight", fixed[f"{conv_name}.weight"])
            bias = out.get(f"{conv_name}.bias", fixed[f"{conv_name}.bias"])
            out[f"{conv_name}.weight"] = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
            out[f"{conv_name}.bias"] = (bias - mean) * scale + shift
        return out

    return traced, fold


def _within(name: str, module: str | None) -> bool:
    """Whether parameter ``name`` belongs to ``module`` (a qualified module name; None: the whole model)."""
    return module is None or name.startswith(module + ".")


class _Objective:
    """The loss as a function of the trainable parameters (torch.func), or only of those of module ``only``,
    in the model's current mode; in eval mode BatchNorm is folded into the convolutions (the function, hence
    every derivative, is unchanged)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, only: str | None = None) -> None:
        self.loss_fn = loss_fn
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and _within(n, only)]
        if not named:
            raise ValueError(f"no trainable parameters under {only!r}")
        self.names = [n for n, _ in named]
        self.params = {n: p.detach() for n, p in named}
        self.like: Vector = list(self.params.values())
        self.device = self.like[0].device
        self.model, self.fold = _fold_batchnorm(model)

    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.fold(params), (x,))

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        return self.loss_fn(self.logits(params, x), y, reduction=reduction)

    def batch(self, data: LabelledImages, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(data.images[start:stop]).to(self.device), data.labels[start:stop].to(self.device)

    def statistics(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[gradient of the summed loss, summed loss, correct predictions], flat: one pass for all three."""
        params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        logits = self.logits(params, x)
        loss = self.loss_fn(logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()))
        correct = (logits.argmax(1) == y).sum()
        return torch.cat([_flat(list(grads)), loss.detach().view(1), correct.to(loss.dtype).view(1)])

    def hvp(self, x: torch.Tensor, y: torch.Tensor, vector: Vector) -> torch.Tensor:
        """H v for the summed loss of one batch, flat: reverse mode over a forward-mode directional derivative
        (measured ~20 % cheaper on CPU than a double backward or forward over reverse)."""
        primals = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        tangents = dict(zip(self.names, vector, strict=True))
        directional = jvp(lambda p: self.loss(p, x, y, "sum"), (primals,), (tangents,))[1]
        return _flat(list(torch.autograd.grad(directional, list(primals.values()))))


def guide_statistics(
    model: nn.Module, data: LabelledImages, loss_fn: LossFn, batch_size: int = 256, only: str | None = None
) -> tuple[Vector, float, float]:
    """Mean-loss gradient (with respect to module ``only``'s parameters, or all), mean loss and accuracy over
    ``data`` in one pass (model in its current mode); under torchrun each rank computes every world-th chunk
    and the chunks are summed in order on all ranks."""
    objective = _Objective(model, loss_fn, only)
    chunks = _chunks(len(data), batch_size)
    size = sum(t.numel() for t in objective.like) + 2
    total = distributed.sum_in_order(
        len(chunks), lambda k: objective.statistics(*objective.batch(data, *chunks[k])), size, objective.device
    )
    n = max(1, len(data))
    return _unflat(total[:-2] / n, objective.like), total[-2].item() / n, total[-1].item() / n


def mean_gradient(
    model: nn.Module, data: LabelledImages, loss_fn: LossFn, batch_size: int = 256, only: str | None = None
) -> Vector:
    """Gradient of the mean loss over ``data`` (model in its current mode)."""
    return guide_statistics(model, data, loss_fn, batch_size, only)[0]


def mean_loss(model: nn.Module, data: LabelledImages, loss_fn: LossFn, batch_size: int = 500) -> float:
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = to_float(data.images[start : start + batch_size]).to(device)
            y = data.labels[start : start + batch_size].to(device)
            total += loss_fn(model(x), y, reduction="sum").item()
    return total / max(1, len(data))


def accuracy(model: nn.Module, data: LabelledImages, batch_size: int = 500) -> float:
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = to_float(data.images[start : start + batch_size]).to(device)
            correct += int((model(x).argmax(1).cpu() == data.labels[start : start + batch_size]).sum().item())
    return correct / max(1, len(data))


def hessian_operator(
    model: nn.Module, data: LabelledImages, loss_fn: LossFn, batch_size: int = 256, only: str | None = None
) -> Callable[[Vector], Vector]:
    """v -> H v for the Hessian of the mean loss over ``data`` (all of it, in fixed chunks; under torchrun the
    chunks are shared out between ranks and summed in order, so every rank gets the single-process H v).
    ``only``: the Hessian with respect to that module's parameters (the network is still run in full for
    every product; :func:`head_hessian_operator` is the fast path for the classifier head)."""
    objective = _Objective(model, loss_fn, only)
    chunks = _chunks(len(data), batch_size)
    batches = [objective.batch(data, *c) for c in chunks]
    size = sum(t.numel() for t in objective.like)

    def apply(vector: Vector) -> Vector:
        def one(k: int) -> torch.Tensor:
            return objective.hvp(*batches[k], vector)

        total = distributed.sum_in_order(len(batches), one, size, objective.device)
        return _unflat(total / len(data), objective.like)

    return apply


def classifier_head(model: nn.Module) -> str:
    """The qualified name of ``model``'s linear classifier, the layer whose input are the pre-logit features:
    timm's ``get_classifier()`` (on the model or its ``backbone``), else the last ``nn.Linear``. A classifier
    that is not linear (a 1x1 convolution, say) is refused: its Hessian is not softmax regression's."""
    names = {id(module): name for name, module in model.named_modules()}
    for owner in (model, getattr(model, "backbone", None)):
        get_classifier = getattr(owner, "get_classifier", None)
        if callable(get_classifier):
            head = get_classifier()
            if not isinstance(head, nn.Linear) or id(head) not in names:
                raise ValueError(
                    f"DPL's influence_params=head needs a linear classifier; {type(owner).__name__}'s is "
                    f"{type(head).__name__}: use influence_params=all"
                )
            return names[id(head)]
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier: use influence_params=all")
    return linear[-1]


def head_features(model: nn.Module, head: str, data: LabelledImages, batch_size: int = 256) -> torch.Tensor:
    """The input of module ``head`` for every image of ``data`` (model in its current mode), checked to give
    the model's logits through that module alone. Under torchrun each rank runs every world-th chunk and all
    ranks gather them in order."""
    module = model.get_submodule(head)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    world, chunks = distributed.current(), _chunks(len(data), batch_size)
    mine: dict[int, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for k in range(world.rank, len(chunks), world.size):
                lo, hi = chunks[k]
                captured.clear()
                logits = model(to_float(data.images[lo:hi]).to(device))
                features = captured[-1]
                through_head = module(features)
                if through_head.shape != logits.shape or not torch.allclose(through_head, logits, atol=1e-4):
                    raise ValueError(
                        f"the model's logits are not {head}(its input): something runs after the classifier, "
                        "so influence_params=head would differentiate another function; use influence_params=all"
                    )
                mine[k] = features.cpu()
    finally:
        hook.remove()
    gathered = {k: t for part in distributed.all_gather_objects(mine) for k, t in part.items()}
    return torch.cat([gathered[k] for k in range(len(chunks))]).to(device)


def head_hessian_operator(
    model: nn.Module, head: str, features: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn, chunk: int = 8192
) -> Callable[[Vector], Vector]:
    """v -> H v for the Hessian of the mean loss with respect to module ``head``'s parameters, on its cached
    input ``features``: the rest of the network is fixed, so no product runs it again, and the sample can be
    the whole training set (a softmax regression's Hessian: positive semi-definite). Every rank computes the
    same products from the same features."""
    module = model.get_submodule(head)
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    labels = labels.to(features.device)

    def summed_loss(p: dict[str, torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        return loss_fn(functional_call(module, p, (features[lo:hi],)), labels[lo:hi], reduction="sum")

    def apply(vector: Vector) -> Vector:
        tangents = dict(zip(params, vector, strict=True))
        total = [torch.zeros_like(t) for t in vector]
        for lo, hi in _chunks(len(features), chunk):
            primals = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            directional = jvp(lambda p: summed_loss(p, lo, hi), (primals,), (tangents,))[1]  # noqa: B023
            grads = torch.autograd.grad(directional, list(primals.values()))
            total = [t + g for t, g in zip(total, grads, strict=True)]
        return [t / len(features) for t in total]

    return apply


def top_eigenvalue(hvp: Callable[[Vector], Vector], like: Vector, iterations: int = 20, seed: int = 0) -> float:
    """Power-iteration estimate of the largest |eigenvalue| of the operator ``hvp``."""
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(t.shape, generator=generator).to(t) for t in like]
    value = 0.0
    for _ in range(iterations):
        norm = _norm(v)
        v = [t / norm for t in v]
        hv = hvp(v)
        value = _dot(hv, v).item()
        v = [t.detach() for t in hv]
    return abs(value)


@dataclass
class SolveRecord:
    """How an inverse-Hessian product was solved (kept in the checkpoint's strategy description)."""

    solver: str
    iterations: int
    damping: float  # lambda in (H + lambda I)^-1
    damped_residual: float  # ||(H + lambda I) s - v|| / ||v||: the solver's own convergence
    residual: float  # ||H s - v|| / ||v||: distance from the undamped inverse (target < 0.1)
    converged: bool
    hvp_images: int
    seconds: float
    scale: float | None = None  # LiSSA only
    stopped: str = ""
    independent_residual: float | None = None  # ||H' s - v|| / ||v|| with H' on other images
    top_eigenvalue: float | None = None  # of H (power iteration); damping = relative damping x this


def _minres(
    op: Callable[[Vector], Vector], b: Vector, tolerance: float, max_iterations: int, bar: tqdm
) -> tuple[Vector, int, str]:
    """MINRES (Paige & Saunders) for a symmetric, possibly indefinite operator: Lanczos vectors, the
    tridiagonal's QR by Givens rotations, and the iterate minimising ||op(x) - b|| over the Krylov space."""
    beta1 = _norm(b)
    x = [torch.zeros_like(t) for t in b]
    if beta1 == 0:
        return x, 0, "zero right-hand side"
    v_prev, v = [torch.zeros_like(t) for t in b], [t / beta1 for t in b]
    w_prev2, w_prev = [torch.zeros_like(t) for t in b], [torch.zeros_like(t) for t in b]
    beta = 0.0  # superdiagonal entry of the current column (none for the first)
    c_prev2, s_prev2, c_prev, s_prev = 1.0, 0.0, 1.0, 0.0  # rotations G_{k-2}, G_{k-1}
    phibar = beta1  # norm of the current residual
    for k in range(1, max_iterations + 1):
        p = op(v)
        alpha = _dot(v, p).item()
        p = [pp - alpha * vv - beta * vp for pp, vv, vp in zip(p, v, v_prev, strict=True)]
        beta_next = _norm(p)
        bar.update()
        epsilon, delta_hat = s_prev2 * beta, c_prev2 * beta
        delta = c_prev * delta_hat + s_prev * alpha
        gamma_bar = -s_prev * delta_hat + c_prev * alpha
        gamma = (gamma_bar**2 + beta_next**2) ** 0.5
        if gamma == 0:
            return x, k, "breakdown"
        c, s = gamma_bar / gamma, beta_next / gamma
        phi, phibar = c * phibar, -s * phibar
        w = [(vv - delta * wp - epsilon * wp2) / gamma for vv, wp, wp2 in zip(v, w_prev, w_prev2, strict=True)]
        x = _axpy(phi, w, x)
        if abs(phibar) / beta1 < tolerance:
            return x, k, "tolerance"
        if beta_next == 0:
            return x, k, "invariant subspace"
        w_prev2, w_prev = w_prev, w
        c_prev2, s_prev2, c_prev, s_prev = c_prev, s_prev, c, s
        v_prev, v, beta = v, [t / beta_next for t in p], beta_next
    return x, max_iterations, "max_iterations"


def solve_inverse_hvp(
    hvp: Callable[[Vector], Vector],
    vector: Vector,
    *,
    damping: float,
    solver: str = "minres",
    tolerance: float = 0.01,
    max_iterations: int = 200,
    scale: float | None = None,
    check_every: int = 10,
    hvp_images: int = 0,
    progress: bool = False,
) -> tuple[Vector, SolveRecord]:
    """Solve (H + damping I) s = vector to the relative ``tolerance``; returns s and the record.

    ``minres``: MINRES, which needs no definiteness (the Hessian of a trained network has negative
    eigenvalues, which stop conjugate gradients and make LiSSA diverge unless damping exceeds them).
    ``lissa``: the recursion h <- v + (1 - damping/scale) h - H h / scale, s = h / scale; ``scale`` must
    exceed the largest eigenvalue of H (diverges otherwise).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown inverse-HVP solver {solver!r}; expected one of {SOLVERS}")
    started = time.perf_counter()
    v_norm = max(_norm(vector), 1e-30)

    def damped(x: Vector) -> Vector:
        return _axpy(damping, x, hvp(x))

    stopped = "max_iterations"
    iterations = 0
    bar = tqdm(total=max_iterations, desc=f"inverse HVP ({solver})", unit="hvp", leave=False, disable=not progress)
    if solver == "minres":
        s, iterations, stopped = _minres(damped, vector, tolerance, max_iterations, bar)
    else:
        if scale is None or scale <= 0:
            raise ValueError("LiSSA needs a scale above the Hessian's largest eigenvalue")
        h = [t.clone() for t in vector]
        for iterations in range(1, max_iterations + 1):
            hv = hvp(h)
            h = [v + (1 - damping / scale) * hh - hvv / scale for v, hh, hvv in zip(vector, h, hv, strict=True)]
            bar.update()
            norm = _norm(h)
            if not torch.isfinite(torch.tensor(norm)) or norm > 1e6 * scale * v_norm:
                raise FloatingPointError(
                    f"LiSSA diverged at step {iterations} (|h| = {norm:.3g}): the Hessian has eigenvalues "
                    f"above scale={scale}"
                )
            if iterations % check_every == 0:
                s = [hh / scale for hh in h]
                if _norm(_axpy(-1.0, vector, damped(s))) / v_norm < tolerance:
                    stopped = "tolerance"
                    break
        s = [hh / scale for hh in h]
    bar.close()
    hs = hvp(s)
    residual = _norm(_axpy(-1.0, vector, hs)) / v_norm
    damped_residual = _norm(_axpy(-1.0, vector, _axpy(damping, s, hs))) / v_norm
    record = SolveRecord(
        solver=solver,
        iterations=iterations,
        damping=damping,
        damped_residual=damped_residual,
        residual=residual,
        converged=damped_residual < tolerance,
        hvp_images=hvp_images,
        seconds=round(time.perf_counter() - started, 2),
        scale=scale if solver == "lissa" else None,
        stopped=stopped,
    )
    return s, record


def influence(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    s: Vector,
    loss_fn: LossFn,
    objective: _Objective | None = None,
    only: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: u_i = s . grad_theta L(z_i) and v_i = grad_x u_i, for a whole batch at once (theta: module
    ``only``'s parameters, or all; ``s`` is shaped like them).

    u is the forward-mode derivative of the per-sample losses along s in parameter space (torch.func.jvp),
    v the reverse-mode gradient of sum(u) with respect to the input: no per-sample parameter gradient is
    materialised, and because the parameters are constants for the reverse pass no weight gradient is
    computed (measured ~17 % cheaper on CPU than forward over reverse). v is per sample because BatchNorm
    is in eval mode (the caller's job), so samples do not interact.
    """
    objective = objective or _Objective(model, loss_fn, only)  # built once per amendment by the caller
    tangents = {n: t.detach() for n, t in zip(objective.names, s, strict=True)}
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        u = jvp(lambda p: objective.loss(p, x, labels, "none"), (objective.params,), (tangents,))[1]
        (v,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), v.detach()


@dataclass
class _Candidates:
    """The best-scoring perturbed samples seen so far (at most ``keep``): candidate position, score, image."""

    positions: torch.Tensor
    scores: torch.Tensor
    images: torch.Tensor

    def merge(self, positions: torch.Tensor, scores: torch.Tensor, images: torch.Tensor, keep: int) -> _Candidates:
        positions = torch.cat([self.positions, positions])
        scores, images = torch.cat([self.scores, scores]), torch.cat([self.images, images])
        order = _ranking(scores, positions)[:keep]
        return _Candidates(positions[order], scores[order], images[order])


def _ranking(scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Indices by decreasing score, ties by increasing candidate position (the same order on every rank)."""
    by_position = torch.argsort(positions)
    return by_position[torch.sort(scores[by_position], descending=True, stable=True).indices]


@dataclass(frozen=True)
class SolveDefaults:
    """The inverse-HVP settings each ``influence_params`` gets unless told otherwise."""

    hvp_images: int  # the Hessian's training-image sample (an independent one as large checks it)
    max_iterations: int
    tolerance: float  # on the damped residual


SOLVE_DEFAULTS = {
    # the head's Hessian runs on cached features, solved to a tight tolerance in seconds; the features are the
    # cost (one forward pass each). On the default recognizer 12,800 images (and 12,800 more for the check)
    # gave residual 0.042 / independent 0.12, against 0.042 / 0.15 with 25,600 at twice the time.
    "head": SolveDefaults(hvp_images=12_800, max_iterations=1_000, tolerance=0.01),
    # every HVP runs the whole network (9 s per 512 images on one CPU core for the default recognizer)
    "all": SolveDefaults(hvp_images=512, max_iterations=100, tolerance=0.05),
}


@register_strategy("dpl")
class DPL(TrainingStrategy):
    """Influence-guided training-set amendment at the start of a fine-tune (``fraction = 0`` is ERM)."""

    name = "dpl"

    def __init__(
        self,
        label_smoothing: float = 0.0,
        fraction: float = 0.04,
        alpha: float = 8 / 255,
        normalize: bool = True,
        guide_fraction: float = 0.05,
        guide_holdout: bool = True,
        influence_params: str = "head",
        solver: str = "minres",
        damping: float = 1e-4,
        tolerance: float = 0.0,
        max_iterations: int = 0,
        lissa_scale: float = 0.0,
        hvp_images: int = 0,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(label_smoothing)
        if not 0 <= fraction <= 1 or not 0 < guide_fraction < 1:
            raise ValueError("DPL needs 0 <= fraction <= 1 and 0 < guide_fraction < 1")
        if solver not in SOLVERS:
            raise ValueError(f"DPL solver must be one of {SOLVERS}, got {solver!r}")
        if influence_params not in INFLUENCE_PARAMS:
            raise ValueError(f"DPL influence_params must be one of {INFLUENCE_PARAMS}, got {influence_params!r}")
        if damping < 0 or tolerance < 0 or max_iterations < 0 or hvp_images < 0:
            raise ValueError("DPL needs damping, tolerance, max_iterations and hvp_images >= 0 (0: the default)")
        defaults = SOLVE_DEFAULTS[influence_params]
        self.fraction, self.alpha, self.normalize = fraction, alpha, normalize
        self.guide_fraction, self.guide_holdout = guide_fraction, guide_holdout
        self.influence_params, self.solver, self.damping = influence_params, solver, damping
        self.tolerance = tolerance or defaults.tolerance
        self.max_iterations = max_iterations or defaults.max_iterations
        self.hvp_images = hvp_images or defaults.hvp_images
        self.lissa_scale = lissa_scale
        self.batch_size, self.seed = batch_size, seed
        self.guide: LabelledImages | None = None
        self.original: int | None = None  # the first `original` training samples are un-amended ones
        self.model: nn.Module | None = None
        self.log: list[dict[str, Any]] = []
        self.amended_indices: list[torch.Tensor] = []
        self.added_images: list[torch.Tensor] = []  # each amendment's added uint8 images, in order
        self.restored: dict[str, Any] | None = None  # state from train_state.pt (resume)

    def criterion(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction=reduction)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self.model = model  # amended in bind_data, once the loop has moved it to its device
        return model

    def bind_data(self, train: LabelledImages, val: LabelledImages | None) -> LabelledImages:
        n_guide = max(1, int(round(self.guide_fraction * len(train))))
        self.guide = train.subset(torch.arange(n_guide))
        self.guide.split = "guide"
        if self.guide_holdout:
            train = train.subset(torch.arange(n_guide, len(train)))
        self.original = len(train)
        if self.restored is not None:  # a resumed run: the amended set from train_state.pt, not recomputed
            return self._restore(train)
        if self.fraction == 0 or self.model is None:
            return train
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            guide = guide_statistics(model, self.guide, self.criterion, self.batch_size, self.influenced(model))
            chance = 1.0 / max(2, int(train.labels.max().item()) + 1)
            if guide[2] < 2 * chance:
                raise ValueError(
                    f"DPL amends the model training starts from, and influence functions assume a converged "
                    f"one; this one classifies {100 * guide[2]:.1f} % of the guide set. Start from a "
                    "trained recognizer: --init CKPT"
                )
            amended, record = self.amend(model, train, guide)
        finally:
            model.train(was_training)
        record.update(guide_accuracy=guide[2])
        self.log.append(record)
        if distributed.current().is_main:
            tqdm.write(
                "DPL " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            )
        return amended

    # -- resume: the amended set travels in train_state.pt ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.amended_indices:
            return {}
        return {
            "original": self.original,
            "amended_indices": [t.clone() for t in self.amended_indices],
            "added_images": [t.clone() for t in self.added_images],
            "log": self.log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state or None

    def _restore(self, train: LabelledImages) -> LabelledImages:
        state = self.restored
        assert state is not None
        if state["original"] != len(train):
            raise ValueError(
                f"the saved DPL amendment was made on {state['original']} training images, this run has "
                f"{len(train)}: resume with the same data and --method-args, or start a new --out"
            )
        self.amended_indices = list(state["amended_indices"])
        self.added_images, self.log = list(state["added_images"]), list(state["log"])
        chosen = torch.cat(self.amended_indices)
        if distributed.current().is_main:
            tqdm.write(f"DPL: the amended set ({len(chosen)} added samples) restored from the saved state")
        return LabelledImages(
            train.name,
            train.split,
            torch.cat([train.images, *self.added_images]),
            torch.cat([train.labels, train.labels[chosen]]),
            train.classes,
        )

    def influenced(self, model: nn.Module) -> str | None:
        """The module whose parameters the influence is taken with respect to (None: the whole model)."""
        return classifier_head(model) if self.influence_params == "head" else None

    def _hessian(self, model: nn.Module, data: LabelledImages) -> Callable[[Vector], Vector]:
        head = self.influenced(model)
        if head is None:
            return hessian_operator(model, data, self.criterion, self.batch_size)
        features = head_features(model, head, data, self.batch_size)
        return head_hessian_operator(model, head, features, data.labels, self.criterion)

    def inverse_hvp(self, model: nn.Module, originals: LabelledImages, vector: Vector) -> tuple[Vector, SolveRecord]:
        """(H + lambda I)^-1 vector with H on a fixed random sample of ``hvp_images`` training images and
        lambda = ``damping`` x H's largest eigenvalue (power iteration); the
        record adds the undamped residual on an independent sample of the same size (how well the sample's
        Hessian stands for the training set's)."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(originals), generator=generator)
        sample, other = order[: self.hvp_images], order[self.hvp_images : 2 * self.hvp_images]
        hvp = self._hessian(model, originals.subset(sample))
        # Damping relative to the spectrum, so that it means the same for any model and loss scale.
        top = top_eigenvalue(hvp, vector, iterations=10, seed=self.seed)
        # LiSSA's recursion converges only if scale exceeds the Hessian's largest eigenvalue.
        scale = (self.lissa_scale or 1.5 * top) if self.solver == "lissa" else None
        s, record = solve_inverse_hvp(
            hvp,
            vector,
            damping=self.damping * top,
            solver=self.solver,
            tolerance=self.tolerance,
            max_iterations=self.max_iterations,
            scale=scale,
            hvp_images=len(sample),
            progress=distributed.current().is_main,
        )
        record.top_eigenvalue = top
        if len(other):
            other_hvp = self._hessian(model, originals.subset(other))
            record.independent_residual = _norm(_axpy(-1.0, vector, other_hvp(s))) / max(_norm(vector), 1e-30)
        return s, record

    def amend(
        self, model: nn.Module, train: LabelledImages, guide: tuple[Vector, float, float] | None = None
    ) -> tuple[LabelledImages, dict[str, Any]]:
        """One amendment: the top-epsilon perturbed samples appended to ``train`` (model in eval mode).

        ``guide``: the guide set's (gradient, loss, accuracy) when already computed. Under torchrun every
        part is shared out between ranks (guide chunks, Hessian chunks, candidate batches) and combined so
        that each rank ends with the single-process result: the same solve, scores and chosen samples.
        """
        if self.guide is None:
            raise RuntimeError("DPL.amend needs a guide set: call bind_data first or set .guide")
        world = distributed.current()
        original = self.original if self.original is not None else len(train)
        influenced = self.influenced(model)
        if guide is None:
            guide = guide_statistics(model, self.guide, self.criterion, self.batch_size, influenced)
        v_guide, guide_loss, _ = guide
        originals = train.subset(torch.arange(original))
        s, solve = self.inverse_hvp(model, originals, v_guide)
        candidates = torch.arange(original)
        if self.amended_indices:  # samples amended earlier are not amended again
            candidates = candidates[~torch.isin(candidates, torch.cat(self.amended_indices))]
        n = int(round(self.fraction * original))
        device = next(model.parameters()).device
        chunks = _chunks(len(candidates), self.batch_size)
        best = _Candidates(
            torch.empty(0, dtype=torch.long),
            torch.empty(0),
            torch.empty((0, *train.images.shape[1:]), dtype=torch.uint8),
        )
        objective = _Objective(model, self.criterion, influenced)
        started = time.perf_counter()
        mine = range(world.rank, len(chunks), world.size)  # batch k on rank k % world
        for k in tqdm(mine, desc="DPL influence", unit="batch", leave=False, disable=not world.is_main):
            lo, hi = chunks[k]
            index = candidates[lo:hi]
            x = to_float(train.images[index]).to(device)
            u, v = influence(model, x, train.labels[index].to(device), s, self.criterion, objective)
            # the sample as stored (uint8), and its predicted decrease of R_G (times N) when added
            images = ((x + self.perturbation(v)).clamp(0, 1) * 255).round()
            scores = u + ((images / 255 - x) * v).flatten(1).sum(1)
            best = best.merge(torch.arange(lo, hi), scores.cpu(), images.to(torch.uint8).cpu(), keep=n)
        influence_seconds = time.perf_counter() - started
        # The global top n is among the ranks' local top n; every rank ranks the union the same way.
        merged = distributed.all_gather_objects(best)
        pool = _Candidates(
            torch.cat([c.positions for c in merged]),
            torch.cat([c.scores for c in merged]),
            torch.cat([c.images for c in merged]),
        )
        order = _ranking(pool.scores, pool.positions)[:n]
        order = order[pool.scores[order] > 0]
        chosen = candidates[pool.positions[order]]
        new_images = pool.images[order]
        changed = (new_images.int() - train.images[chosen].int()).abs()
        self.amended_indices.append(chosen)
        self.added_images.append(new_images)
        amended = LabelledImages(
            train.name,
            train.split,
            torch.cat([train.images, new_images]),
            torch.cat([train.labels, train.labels[chosen]]),
            train.classes,
        )
        # wall-clock seconds (mean over ranks, each of which did ~1/world of the candidates)
        influence_seconds = distributed.all_reduce_sum([influence_seconds])[0] / world.size
        record = {
            "guide_loss": guide_loss,
            "inverse_hvp": asdict(solve),
            "added": len(chosen),
            "candidates": len(candidates),
            "world_size": world.size,
            "influence_seconds_per_10k": round(1e4 * influence_seconds / max(1, len(candidates)), 1),
            "predicted_guide_decrease": pool.scores[order].sum().item() / len(train),
            "mean_abs_change_levels": changed.float().mean().item() if len(chosen) else 0.0,
            "train_size": len(amended),
        }
        return amended, record

    def perturbation(self, v: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return self.alpha * v
        peak = v.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))
        return self.alpha * v / peak

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "fraction": self.fraction,
            "alpha": self.alpha,
            "normalize": self.normalize,
            "mode": "augmentation",
            "amended": "once, at the start, on the model training starts from (--init: a converged model)",
            "guide_fraction": self.guide_fraction,
            "guide_holdout": self.guide_holdout,
            "influence_params": self.influence_params,
            "inverse_hvp": {
                "solver": self.solver,
                "damping": f"{self.damping} x the Hessian's top eigenvalue",
                "tolerance": self.tolerance,
                "max_iterations": self.max_iterations,
                "hvp_images": self.hvp_images,
                "lissa_scale": self.lissa_scale or "1.5 x top eigenvalue",
            },
            "amendment_log": self.log,
        }
