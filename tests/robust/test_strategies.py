"""Robust training strategies: reduction to ERM at zero strength, and one step as each paper describes.

Tiny models (timm ``test_resnet`` with its strided stem) and a few hundred real Fashion-MNIST images.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dyntta.data import LabelledImages, to_float
from dyntta.models import Recognizer, load_recognizer, save_recognizer
from dyntta.robust import STRATEGIES, TrainingStrategy, create_strategy, parse_method_args
from dyntta.robust.advbn import AdvBN, DualBatchNorm2d
from dyntta.robust.damp import DAMP, multiplicative_noise
from dyntta.robust.l2p import NOISE_FILE, Learn2Perturb, NoiseInjection, load_noisy_recognizer
from tests.robust.conftest import tiny


def one_step(
    strategy: TrainingStrategy,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 1,
) -> nn.Module:
    model = strategy.prepare_model(model).train()
    strategy.start_epoch(0, 1)
    opt = torch.optim.SGD(
        strategy.parameter_groups(model), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    torch.manual_seed(seed)
    strategy.training_step(model, images, labels, opt)
    strategy.after_step(model)
    return model


def batch(data: LabelledImages, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    return to_float(data.images[:n]), data.labels[:n]


def assert_same_parameters(a: nn.Module, b: nn.Module, atol: float = 1e-6, skip: str = "\0") -> None:
    pa = {k: v for k, v in a.named_parameters() if skip not in k}
    pb = dict(b.named_parameters())
    assert pa, "no parameters compared"
    for key, value in pa.items():
        assert torch.allclose(value, pb[key], atol=atol), f"{key} differs by {(value - pb[key]).abs().max()}"


# --- registry and CLI parsing ---------------------------------------------------------------------------


def test_registry_and_method_args() -> None:
    assert {"erm", "dpl", "damp", "l2p", "advbn"} <= set(STRATEGIES)
    damp = create_strategy("damp", **parse_method_args(["sigma=0.3", "micro_batches=4"]))
    assert (damp.sigma, damp.micro_batches) == (0.3, 4)
    l2p = create_strategy("l2p", **parse_method_args(["adv_eps=8/255", "deterministic=yes"]))
    assert l2p.adv_eps == pytest.approx(8 / 255) and l2p.deterministic is True
    with pytest.raises(ValueError, match="accepts"):
        create_strategy("damp", rho=0.1)
    with pytest.raises(ValueError, match="not a valid int"):
        create_strategy("damp", micro_batches="many")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_method_args(["sigma"])


# --- DAMP -----------------------------------------------------------------------------------------------


def test_damp_sigma_zero_is_erm(fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    base = tiny(fmnist_train.classes)
    erm = one_step(TrainingStrategy(), copy.deepcopy(base), x, y)
    damp = one_step(DAMP(sigma=0.0, micro_batches=8), copy.deepcopy(base), x, y)
    assert_same_parameters(erm, damp, atol=1e-5)
    for (name, b1), b2 in zip(erm.named_buffers(), damp.buffers(), strict=True):  # BN over the whole batch
        assert torch.allclose(b1.float(), b2.float(), atol=1e-5), name


def test_damp_noise_statistics_and_gradient_convention(fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    model = tiny(fmnist_train.classes).train()
    sigma, m = 0.2, 4
    torch.manual_seed(0)
    with multiplicative_noise(model, sigma, m) as perturbed:
        factors = torch.cat([p.factor.flatten() for p in perturbed])
        # N(1, sigma^2) factors, independent per micro-batch
        assert factors.mean().item() == pytest.approx(1.0, abs=0.01)
        assert factors.std().item() == pytest.approx(sigma, rel=0.03)
        first = perturbed[0].factor
        assert not torch.allclose(first[0], first[1])
    # Micro-batch k's gradient w.r.t. its perturbed kernel equals the gradient of its own loss (/M) run
    # through a plain copy of the model whose weights are that perturbed kernel: parallel = sequential.
    # (BatchNorm in eval mode makes the micro-batches independent for this comparison.)
    model.eval()
    with multiplicative_noise(model, sigma, m) as perturbed:
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p.value for p in perturbed])
        k = 2
        plain = copy.deepcopy(model)
        for module_copy in plain.modules():  # drop the patched forwards from the copy
            module_copy.__dict__.pop("forward", None)
        with torch.no_grad():
            for p_copy, p in zip([mod.weight for mod in _perturbable(plain)], perturbed, strict=True):
                p_copy.copy_(p.value[k])
    micro = slice(k * len(x) // m, (k + 1) * len(x) // m)
    own = nn.functional.cross_entropy(plain(x[micro]), y[micro]) / m
    expected = torch.autograd.grad(own, [mod.weight for mod in _perturbable(plain)])
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g[k], e, atol=1e-6)


def _perturbable(model: nn.Module) -> list[nn.Module]:
    from dyntta.robust.damp import perturbable_modules

    return perturbable_modules(model)


def test_damp_changes_the_step(fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    base = tiny(fmnist_train.classes)
    erm = one_step(TrainingStrategy(), copy.deepcopy(base), x, y)
    damp = one_step(DAMP(sigma=0.2), copy.deepcopy(base), x, y)
    diff = max((a - b).abs().max().item() for a, b in zip(erm.parameters(), damp.parameters(), strict=True))
    assert diff > 1e-4


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_sam_asam_rho_zero_is_erm_and_ascent_raises_loss(method: str, fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    base = tiny(fmnist_train.classes)
    erm = one_step(TrainingStrategy(), copy.deepcopy(base), x, y)
    flat = one_step(create_strategy(method, rho=0.0), copy.deepcopy(base), x, y)
    assert_same_parameters(erm, flat, atol=1e-6)
    for b1, b2 in zip(erm.buffers(), flat.buffers(), strict=True):
        assert torch.allclose(b1.float(), b2.float())
    strategy = create_strategy(method)
    model = strategy.prepare_model(copy.deepcopy(base)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    logs = strategy.training_step(model, x, y, opt)
    assert logs["sharp_loss"] > logs["loss"]
    assert_same_parameters(model, base, atol=1e-6)  # the ascent is undone (lr 0: no step)


# --- Learn2Perturb --------------------------------------------------------------------------------------


def test_l2p_zero_noise_without_adversary_is_erm(fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    base = tiny(fmnist_train.classes)
    erm = one_step(TrainingStrategy(), copy.deepcopy(base), x, y)
    l2p = one_step(
        Learn2Perturb(noise_init=0.0, noise_floor=0.0, gamma=0.0, adv_start=10**9), copy.deepcopy(base), x, y
    )
    assert_same_parameters(l2p, erm, atol=1e-6, skip="l2p_noise")
    for (name, b1), b2 in zip(erm.named_buffers(), l2p.buffers(), strict=True):  # theta step leaves BN stats
        assert torch.allclose(b1.float(), b2.float()), name


def test_l2p_step_sigma_floor_and_stochastic_inference(fmnist_train: LabelledImages, tmp_path) -> None:
    x, y = batch(fmnist_train, 32)
    strategy = Learn2Perturb(noise_init=0.01, noise_floor=0.01, gamma=0.0, adv_steps=2, adv_start=0, eval_samples=3)
    # Starting at the floor without the regulariser, the loss pushes about half the scales below it.
    model = one_step(strategy, tiny(fmnist_train.classes), x, y, lr=1.0)
    thetas = torch.cat([m.theta.detach().flatten() for m in model.modules() if isinstance(m, NoiseInjection)])
    assert len(model.l2p_noise) == 1 + 4  # stem + one block per stage
    assert thetas.min() >= torch.tensor(0.01)
    assert 0.1 < (thetas == 0.01).float().mean().item() < 0.9 and thetas.max().item() > 0.01
    # noise stays on at inference: two passes differ; k-sample averaging; deterministic option
    evaluated = strategy.eval_mode(model)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        assert evaluated(x).shape == (len(x), 10)
    deterministic = Learn2Perturb(deterministic=True).eval_mode(model)
    with torch.no_grad():
        assert torch.equal(deterministic(x), deterministic(x))
    # export: a plain recognizer (mean path) plus the noise maps for torch-side k-sample averaging
    plain = strategy.inference_model(model)
    assert type(plain) is Recognizer and not any(isinstance(m, NoiseInjection) for m in plain.modules())
    save_recognizer(plain, tmp_path)
    assert strategy.save_artifacts(model, tmp_path) == [NOISE_FILE]
    with torch.no_grad():
        assert torch.allclose(load_recognizer(tmp_path)(x), deterministic(x), atol=1e-5)
        noisy = load_noisy_recognizer(tmp_path, k=4)
        assert noisy.k == 4 and not torch.allclose(noisy(x), noisy(x))


def test_l2p_regulariser_raises_sigma(fmnist_train: LabelledImages) -> None:
    """The sigma term alone (weights' gradient removed by the alternation) pushes the scales up."""
    x, y = batch(fmnist_train, 32)
    strategy = Learn2Perturb(noise_init=0.1, gamma=10.0, adv_start=10**9)
    model = one_step(strategy, tiny(fmnist_train.classes), x, y, lr=0.1)
    mean = torch.cat([m.theta.flatten() for m in model.l2p_noise.values()]).mean().item()
    assert mean > 0.1


# --- AdvBN ----------------------------------------------------------------------------------------------


def test_advbn_without_adversary_is_plain_fine_tuning(trained: Recognizer, fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    advbn = one_step(AdvBN(adv_weight=0.0), copy.deepcopy(trained), x, y)
    # ERM fine-tuning of the same head, with the front frozen (BN in eval) as AdvBN fine-tunes
    erm = copy.deepcopy(trained)
    b = erm.backbone
    front = [b.conv1, b.bn1, b.act1, b.maxpool, b.layer1]
    for module in front:
        module.requires_grad_(False)
    erm.train()
    for module in front:
        module.eval()
    opt = torch.optim.SGD(
        [p for p in erm.parameters() if p.requires_grad], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    TrainingStrategy().training_step(erm, x, y, opt)
    plain = AdvBN(branch="clean").inference_model(advbn)
    assert type(plain) is Recognizer
    assert_same_parameters(plain, erm, atol=1e-6)
    assert torch.equal(plain.backbone.conv1[0].weight, trained.backbone.conv1[0].weight)  # front frozen


def test_advbn_inner_loop_raises_the_loss(trained: Recognizer, fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train, 128)
    strategy = AdvBN()
    model = strategy.prepare_model(copy.deepcopy(trained))
    assert sum(isinstance(m, DualBatchNorm2d) for m in model.modules()) > 0
    features = strategy._frozen_front(model, x)
    adv = strategy.perturb(features, y)
    losses = strategy.last_inner_losses
    assert len(losses) == strategy.steps + 1
    assert losses[-1] > losses[0] + 0.05, losses
    a, b = strategy.last_factors
    assert a.min() >= 1 - strategy.eps - 1e-6 and a.max() <= 1 + strategy.eps + 1e-6
    assert b.min() >= 1 - strategy.eps - 1e-6 and b.max() <= 1 + strategy.eps + 1e-6
    assert adv.shape == features.shape and adv.min() >= 0  # post-ReLU cut
    # eps = 0: the perturbation is the identity
    still = AdvBN(eps=0.0)
    still.prepare_model(copy.deepcopy(trained))
    assert torch.allclose(still.perturb(features, y), features, atol=1e-5)


def test_advbn_exports_the_chosen_branch(trained: Recognizer, fmnist_train: LabelledImages) -> None:
    x, y = batch(fmnist_train)
    strategy = AdvBN()
    model = one_step(strategy, copy.deepcopy(trained), x, y)
    for branch in ("clean", "adv"):
        folded = AdvBN(branch=branch).inference_model(model)
        expected = AdvBN(branch=branch).eval_mode(model)
        with torch.no_grad():
            assert torch.allclose(folded.eval()(x), expected(x), atol=1e-5)
    with torch.no_grad():  # the two branches really are separate after a step
        dual = next(m for m in model.modules() if isinstance(m, DualBatchNorm2d))
        assert not torch.allclose(dual.clean.weight, dual.adv.weight)
