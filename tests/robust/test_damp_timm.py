"""DAMP beyond ResNets: every normalisation scale (LayerNorm, GroupNorm, BatchNormAct) is perturbed, timm's
own layer classes keep their forward (Conv2dSame's padding, BatchNormAct's activation), and an unknown
subclass is refused by name. Tiny timm test configs at 32 px."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from dyntta.robust.damp import DAMP, multiplicative_noise, perturbable_modules
from dyntta.robust.strategy import TrainingStrategy


def timm_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if "vit" in name else {}
    return timm.create_model(name, num_classes=10, **kwargs)


@pytest.mark.parametrize("name", ["test_vit", "test_convnext", "test_efficientnet"])
def test_sigma_zero_is_the_unpatched_model_and_every_norm_scale_is_covered(name: str) -> None:
    model = timm_model(name).train()
    x = torch.rand(8, 3, 32, 32)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.GroupNorm | nn.BatchNorm2d)]
    assert norms and all(m in perturbable_modules(model) for m in norms if m.weight is not None)
    reference = timm_model(name).train()
    with torch.no_grad():
        expected = reference(x)
        with multiplicative_noise(model, sigma=0.0, m=4):
            got = model(x)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_vit_step_matches_erm_at_sigma_zero_and_noise_reaches_layernorm() -> None:
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    stepped = {}
    for key, strategy in {"erm": TrainingStrategy(), "damp": DAMP(sigma=0.0, micro_batches=4)}.items():
        model = timm_model("test_vit").train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        strategy.training_step(model, x, y, opt)
        stepped[key] = model
    for (name, a), b in zip(stepped["damp"].named_parameters(), stepped["erm"].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    model = timm_model("test_vit").train()
    norm = next(m for m in model.modules() if isinstance(m, nn.LayerNorm))
    with multiplicative_noise(model, sigma=0.5, m=2) as perturbed:
        (p,) = [p for p in perturbed if p.param is norm.weight]
        assert not torch.allclose(p.value[0], p.value[1])  # each micro-batch its own LayerNorm scale


def test_conv2d_same_keeps_its_padding() -> None:
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 4, kernel_size=3, stride=2), nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(4, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
        with multiplicative_noise(model, sigma=0.0, m=2):
            assert torch.allclose(model(x), expected, atol=1e-6)


def test_an_unknown_subclass_is_refused_by_name() -> None:
    class ScaledConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), ScaledConv(4, 4, 3))
    with pytest.raises(ValueError, match=r"'1'.*ScaledConv"), multiplicative_noise(model, sigma=0.1, m=1):
        pass
    assert type(model[0]).forward is nn.Conv2d.forward and "forward" not in vars(model[0])  # restored


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"])
def test_one_micro_batch_runs_plain_kernels_with_the_same_result(name: str) -> None:
    """M = 1 takes the plain-kernel path (fused normalisation affine); it must compute what the grouped path
    computes when every micro-batch draws the same factors: same logits, same summed gradients."""
    model = timm_model(name).train()
    with torch.no_grad():  # timm starts normalisation shifts at 0: move every parameter so each one counts
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def logits_and_grads(
        m: int, values: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        with multiplicative_noise(model, sigma=0.3, m=m) as perturbed:
            with torch.no_grad():
                for k, p in enumerate(perturbed):
                    p.value.copy_(values[k].expand_as(p.value) if values else p.value[:1].expand_as(p.value))
            logits = model(x)
            grads = torch.autograd.grad(nn.functional.cross_entropy(logits, y), [p.value for p in perturbed])
            return logits.detach(), [g.sum(0) for g in grads], [p.value[0].detach().clone() for p in perturbed]

    grouped, grouped_grads, values = logits_and_grads(2, None)  # both micro-batches: the same factors
    plain, plain_grads, _ = logits_and_grads(1, values)
    assert torch.allclose(plain, grouped, atol=1e-5), (plain - grouped).abs().max()
    for g1, g2 in zip(plain_grads, grouped_grads, strict=True):
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-5), (g1 - g2).abs().max()
