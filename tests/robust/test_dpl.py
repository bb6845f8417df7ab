"""DPL: the inverse-Hessian solve against an exact inverse, the batched influence against plain autograd,
the amendment's effect on the guide loss, and where in training the amendment runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dyntta.data import LabelledImages, to_float
from dyntta.models import Recognizer
from dyntta.robust import TrainingStrategy
from dyntta.robust.dpl import (
    DPL,
    classifier_head,
    head_features,
    head_hessian_operator,
    hessian_operator,
    influence,
    mean_gradient,
    mean_loss,
    solve_inverse_hvp,
)
from dyntta.train.loop import LoopConfig, fit
from tests.robust.conftest import tiny

# --- the inverse-Hessian product on a convex model ------------------------------------------------------


def logistic_problem(n: int = 400, d: int = 6) -> tuple[nn.Module, LabelledImages, torch.Tensor, torch.Tensor]:
    """Softmax regression on uint8 'images' (n, 1, 1, d): convex, with an exact Hessian."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 1, 1, d), generator=generator, dtype=torch.uint8)
    x = to_float(pixels).flatten(1)
    y = (x[:, 0] - x[:, 1] + 0.3 * torch.randn(n, generator=generator) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    return model, LabelledImages("toy", "train", pixels, y, ["0", "1"]), x, y


def exact_damped_inverse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: list[torch.Tensor], damping: float):
    """(H + damping I)^-1 v with H the exact Hessian of the mean cross-entropy in (weight, bias)."""
    layer = model[1]
    d = x.shape[1]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w, b = flat[: 2 * d].view(2, d), flat[2 * d :]
        return nn.functional.cross_entropy(x @ w.T + b, y)

    flat = torch.cat([layer.weight.detach().flatten(), layer.bias.detach()]).double()
    hessian = torch.autograd.functional.hessian(lambda f: loss(f.float()).double(), flat)
    rhs = torch.cat([t.flatten() for t in v]).double()
    return hessian, torch.linalg.solve(hessian + damping * torch.eye(len(rhs), dtype=hessian.dtype), rhs)


def fitted_logistic() -> tuple[nn.Module, LabelledImages, torch.Tensor, torch.Tensor]:
    model, data, x, y = logistic_problem()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 1e-3 * model[1].weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)  # a converged model, as the amendment assumes
    return model, data, x, y


@pytest.mark.parametrize("influence_params", ["head", "all"])
@pytest.mark.parametrize("solver", ["minres", "lissa"])
def test_inverse_hvp_matches_the_exact_inverse_at_the_default_settings(solver: str, influence_params: str) -> None:
    """At DPL's defaults (damping, tolerance, iteration cap), the solve reaches (H + lambda I)^-1 v on a
    convex model and records an undamped residual below 0.1. LiSSA gets a larger iteration cap and a
    tighter tolerance (it needs about scale / lambda steps and its slow directions leave the largest error,
    which is why MINRES is the default). Softmax regression is all head, so both parameter choices (the
    cached-feature path and the whole-network one) must reach the same exact inverse."""
    model, data, x, y = fitted_logistic()
    guide_v = mean_gradient(
        model,
        data.subset(torch.arange(50)),
        lambda lo, la, reduction="mean": nn.functional.cross_entropy(lo, la, reduction=reduction),
    )
    defaults = DPL(influence_params=influence_params)
    strategy = DPL(
        influence_params=influence_params,
        solver=solver,
        hvp_images=len(data),
        **({"max_iterations": 3000, "tolerance": defaults.tolerance / 5} if solver == "lissa" else {}),
    )
    strategy.criterion = lambda lo, la, reduction="mean": nn.functional.cross_entropy(lo, la, reduction=reduction)
    s, record = strategy.inverse_hvp(model, data, guide_v)
    assert record.damping == pytest.approx(defaults.damping * record.top_eigenvalue)
    hessian, exact = exact_damped_inverse(model, x, y, guide_v, record.damping)
    estimate = torch.cat([t.flatten() for t in s]).double()
    assert record.converged, record
    assert (estimate - exact).norm() / exact.norm() < 2 * defaults.tolerance
    rhs = torch.cat([t.flatten() for t in guide_v]).double()
    assert (hessian @ estimate - rhs).norm() / rhs.norm() < 0.1
    assert record.residual < 0.1


def test_minres_solves_indefinite_systems_where_conjugate_gradients_cannot() -> None:
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-2.0, 10.0, 30, dtype=torch.float64)) @ q.T
    b = torch.randn(30, dtype=torch.float64)
    s, record = solve_inverse_hvp(lambda v: [a @ v[0]], [b], damping=0.0, tolerance=1e-8, max_iterations=100)
    assert record.stopped == "tolerance" and record.iterations <= 30
    assert torch.allclose(s[0], torch.linalg.solve(a, b), atol=1e-6)
    with pytest.raises(FloatingPointError, match="diverged"):  # LiSSA cannot handle the negative part
        solve_inverse_hvp(lambda v: [a @ v[0]], [b], damping=0.0, solver="lissa", scale=15.0, max_iterations=2000)


# --- influence ------------------------------------------------------------------------------------------


def test_batched_influence_equals_per_sample_autograd(trained: Recognizer, fmnist_train: LabelledImages) -> None:
    model = copy.deepcopy(trained).eval()
    criterion = DPL(label_smoothing=0.1).criterion
    torch.manual_seed(0)
    s = [torch.randn_like(p) * 0.01 for p in model.parameters()]
    x, y = to_float(fmnist_train.images[:4]), fmnist_train.labels[:4]
    u, v = influence(model, x, y, s, criterion)
    for i in range(4):
        xi = x[i : i + 1].clone().requires_grad_(True)
        grads = torch.autograd.grad(criterion(model(xi), y[i : i + 1]), list(model.parameters()), create_graph=True)
        ui = sum((g * si).sum() for g, si in zip(grads, s, strict=True))
        (vi,) = torch.autograd.grad(ui, xi)
        assert math.isclose(u[i].item(), ui.item(), rel_tol=1e-4, abs_tol=1e-7)
        assert torch.allclose(v[i], vi[0], rtol=1e-3, atol=1e-7)


def test_the_head_hessian_on_cached_features_is_the_networks_hessian_in_the_head(
    trained: Recognizer, fmnist_train: LabelledImages
) -> None:
    """The fast path (the classifier's input cached once, products on the head alone) gives the same H v as
    differentiating the whole network with respect to the head's parameters."""
    model = copy.deepcopy(trained).eval()
    criterion = DPL(label_smoothing=0.1).criterion
    head = classifier_head(model)
    assert head == "backbone.fc"
    data = fmnist_train.subset(torch.arange(96))
    torch.manual_seed(0)
    v = [torch.randn_like(p) for n, p in model.named_parameters() if n.startswith(head + ".")]
    features = head_features(model, head, data, batch_size=40)  # chunks that do not divide the data
    assert features.shape == (96, model.get_submodule(head).in_features)
    fast = head_hessian_operator(model, head, features, data.labels, criterion, chunk=50)(v)
    slow = hessian_operator(model, data, criterion, batch_size=32, only=head)(v)
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_head_influence_equals_per_sample_autograd_in_the_head(
    trained: Recognizer, fmnist_train: LabelledImages
) -> None:
    """u_i = s . grad_head L(z_i), and v_i its gradient through the whole network to the pixels."""
    model = copy.deepcopy(trained).eval()
    criterion = DPL(label_smoothing=0.1).criterion
    head = classifier_head(model)
    params = [p for n, p in model.named_parameters() if n.startswith(head + ".")]
    torch.manual_seed(1)
    s = [torch.randn_like(p) * 0.1 for p in params]
    x, y = to_float(fmnist_train.images[:3]), fmnist_train.labels[:3]
    u, v = influence(model, x, y, s, criterion, only=head)
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        grads = torch.autograd.grad(criterion(model(xi), y[i : i + 1]), params, create_graph=True)
        ui = sum((g * si).sum() for g, si in zip(grads, s, strict=True))
        (vi,) = torch.autograd.grad(ui, xi)
        assert math.isclose(u[i].item(), ui.item(), rel_tol=1e-4, abs_tol=1e-7)
        assert torch.allclose(v[i], vi[0], rtol=1e-3, atol=1e-7)
        assert vi.abs().sum() > 0  # the head's influence still reaches the pixels


def test_the_head_solve_converges_on_a_network(trained: Recognizer, fmnist_train: LabelledImages) -> None:
    """On a real (tiny) network, the head's inverse-HVP meets issue 17's residual target, and the record
    says how well the other half's curvature agrees."""
    model = copy.deepcopy(trained).eval()
    strategy = DPL(label_smoothing=0.1, hvp_images=250)
    head = strategy.influenced(model)
    guide_v = mean_gradient(model, fmnist_train.subset(torch.arange(100)), strategy.criterion, only=head)
    s, record = strategy.inverse_hvp(model, fmnist_train.subset(torch.arange(100, 600)), guide_v)
    assert [t.shape for t in s] == [t.shape for t in guide_v]
    assert record.converged and record.stopped == "tolerance", record
    assert record.residual < 0.1 and record.hvp_images == 250
    assert record.independent_residual is not None and math.isfinite(record.independent_residual)


def test_head_influence_refuses_what_is_not_a_linear_classifier() -> None:
    class ConvHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Conv2d(4, 2, 1)

        def get_classifier(self) -> nn.Module:
            return self.head

    with pytest.raises(ValueError, match="influence_params=all"):
        classifier_head(ConvHead())
    squashed = nn.Sequential(nn.Flatten(), nn.Linear(6, 2), nn.Tanh())  # something runs after the classifier
    pixels = torch.zeros((4, 1, 1, 6), dtype=torch.uint8)
    data = LabelledImages("toy", "train", pixels + 200, torch.zeros(4, dtype=torch.long), ["0", "1"])
    with pytest.raises(ValueError, match="runs after the classifier"):
        head_features(squashed, classifier_head(squashed), data)


def test_amendment_lowers_the_guide_loss(trained: Recognizer, fmnist_train: LabelledImages) -> None:
    """A training step on the amended samples lowers the guide-set loss more than the same step on the
    originals, and the added samples are valid images near the originals."""
    train = fmnist_train.subset(torch.arange(100, 400))
    strategy = DPL(fraction=0.1, alpha=16 / 255, hvp_images=64, max_iterations=10, guide_holdout=False)
    strategy.guide = fmnist_train.subset(torch.arange(100))
    strategy.original = len(train)
    model = copy.deepcopy(trained).eval()
    amended, record = strategy.amend(model, train)
    added = len(amended) - len(train)
    assert added == record["added"] and 0 < added <= 30
    assert record["inverse_hvp"]["damping"] > 0 and "residual" in record["inverse_hvp"]
    new, old = amended.images[len(train) :], train.images[strategy.amended_indices[0]]
    assert new.dtype == torch.uint8 and (new.int() - old.int()).abs().max() <= 16
    assert not torch.equal(new, old)
    assert torch.equal(amended.labels[len(train) :], train.labels[strategy.amended_indices[0]])

    def guide_loss_after_step(images: torch.Tensor, lr: float = 1e-3) -> float:
        stepped = copy.deepcopy(model)
        loss = nn.functional.cross_entropy(
            stepped(to_float(images)), amended.labels[len(train) :], reduction="sum"
        ) / len(train)
        grads = torch.autograd.grad(loss, list(stepped.parameters()))
        with torch.no_grad():
            for p, g in zip(stepped.parameters(), grads, strict=True):
                p -= lr * g
        return mean_loss(stepped, strategy.guide, strategy.criterion)

    before = mean_loss(model, strategy.guide, strategy.criterion)
    with_amended, with_original = guide_loss_after_step(new), guide_loss_after_step(old)
    assert with_amended < with_original < before, (before, with_amended, with_original)


# --- where the amendment runs ---------------------------------------------------------------------------


def test_zero_fraction_is_erm(fmnist_train: LabelledImages, tmp_path) -> None:
    data = fmnist_train.subset(torch.arange(128))
    config = LoopConfig(epochs=2, batch_size=64, lr=0.05, seed=0, device="cpu")
    (tmp_path / "erm").mkdir()
    (tmp_path / "dpl").mkdir()
    erm, _ = fit(tiny(data.classes), TrainingStrategy(), data, None, config, tmp_path / "erm")
    dpl, _ = fit(tiny(data.classes), DPL(fraction=0.0, guide_holdout=False), data, None, config, tmp_path / "dpl")
    for (name, a), b in zip(dpl.named_parameters(), erm.parameters(), strict=True):
        assert torch.equal(a, b), name


class RecordingDPL(DPL):
    """DPL that records the learning rate of every optimizer step it takes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lrs: list[float] = []

    def training_step(self, model, images, labels, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        return super().training_step(model, images, labels, optimizer)


def test_amends_the_starting_model_and_the_schedule_covers_the_amended_set(
    trained: Recognizer, fmnist_train: LabelledImages, tmp_path
) -> None:
    strategy = RecordingDPL(fraction=0.1, hvp_images=32, max_iterations=3, batch_size=128)
    config = LoopConfig(epochs=2, batch_size=64, lr=0.01, warmup_epochs=0, seed=0, device="cpu")
    fit(copy.deepcopy(trained), strategy, fmnist_train.subset(torch.arange(200)), None, config, tmp_path)
    (record,) = strategy.log  # amended once, before training
    assert record["train_size"] > record["candidates"] and record["guide_accuracy"] > 0.3
    described = strategy.describe()["amendment_log"][0]["inverse_hvp"]
    assert {"damping", "residual", "iterations", "solver"} <= set(described)
    # every step of both epochs ran on the amended set, none of them at learning rate 0
    assert len(strategy.lrs) == 2 * math.ceil(record["train_size"] / 64)
    assert min(strategy.lrs) > 0


def test_refuses_to_amend_an_untrained_model(fmnist_train: LabelledImages, tmp_path) -> None:
    config = LoopConfig(epochs=1, batch_size=64, seed=0, device="cpu")
    with pytest.raises(ValueError, match="--init"):
        fit(tiny(fmnist_train.classes, seed=3), DPL(), fmnist_train.subset(torch.arange(200)), None, config, tmp_path)
