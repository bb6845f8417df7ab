"""The final linear classifier (``influence_params="head"``): its name, its input features, and the Hessian of
the loss with respect to its parameters on those cached features.

Which parameters theta is (``influence_params``): ``head`` (default), the final linear classifier only, as
Koh & Liang do for deep networks (their Inception experiments); ``all``, every trainable parameter. With the
head, H is a softmax regression's Hessian on the pre-logit features: positive semi-definite, computed on
cached features of ``hvp_images`` training images (no product runs the network again) and solved to a
tight tolerance in seconds; the independent residual is checked on as many other images, and v_i is still
the gradient through the whole network. With all parameters, every HVP runs the network: on one CPU core for the default
recognizer MINRES stopped at its 100-iteration cap with residual 0.34 on its 512-image sample and 1.2 on an
independent one (docs/RESULTS.md): an inverse of 512 images' curvature, not the training set's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp

from dyntta import distributed
from dyntta.data import LabelledImages, to_float
from dyntta.robust.dpl.objective import LossFn, fixed_chunks
from dyntta.robust.dpl.vectors import Vector


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
    world, chunks = distributed.current(), fixed_chunks(len(data), batch_size)
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
        for lo, hi in fixed_chunks(len(features), chunk):
            primals = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            directional = jvp(lambda p: summed_loss(p, lo, hi), (primals,), (tangents,))[1]  # noqa: B023
            grads = torch.autograd.grad(directional, list(primals.values()))
            total = [t + g for t, g in zip(total, grads, strict=True)]
        return [t / len(features) for t in total]

    return apply
