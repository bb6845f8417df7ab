"""The TTA peers of benchmarks/tta_peers.py on a tiny BN network: each does what its paper says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.peers import BatchNormAdapt, Memo, Stateless, Tent, batch_norm_layers, flip_tta
from benchmarks.peers.cache import UnitResult, load_all
from benchmarks.peers.memo import marginal_entropy
from benchmarks.peers.stream import Condition, Stream
from benchmarks.peers.table import markdown, summarise
from benchmarks.peers.tent import entropy
from benchmarks.tta_peers import run_unit


def tiny_model() -> nn.Module:
    """Two conv + BN blocks with running statistics from a few training-mode passes (not the defaults)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    with torch.no_grad():
        for bn in batch_norm_layers(model):  # affine parameters away from (1, 0), as after training
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        model.train()
        for _ in range(5):
            model(torch.rand(16, 3, 32, 32) * 0.5)
    return model.eval()


def shifted_batch(n: int = 32) -> torch.Tensor:
    """Brighter, lower-contrast images than the "training" ones: a shift BN statistics can see."""
    return 0.6 + 0.3 * torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_bn_adaptation_normalises_with_the_batch_statistics() -> None:
    model = tiny_model()
    before = snapshot(model)
    adapt = BatchNormAdapt(model)
    bn = batch_norm_layers(adapt.model)[0]
    seen: dict[str, torch.Tensor] = {}
    bn.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], y=out))
    x = shifted_batch()
    logits = adapt(x)
    inp = seen["x"]
    mean, var = inp.mean((0, 2, 3), keepdim=True), inp.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (inp - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(seen["y"], expected)
    assert not torch.allclose(logits, model(x), atol=1e-3)  # the training statistics give other logits
    adapt(torch.rand(8, 3, 32, 32))  # episodic: another batch leaves no trace
    torch.testing.assert_close(adapt(x), logits)
    for k, v in model.state_dict().items():  # the source model, running statistics included, is untouched
        torch.testing.assert_close(v, before[k])


def test_tent_trains_only_bn_affine_parameters_and_lowers_the_batch_entropy() -> None:
    model = tiny_model()
    tent = Tent(model)
    start = snapshot(tent.model)
    x = shifted_batch()
    first = tent(x)
    second = tent(x)  # the same batch again, through the parameters the first step updated
    assert entropy(second) < entropy(first)
    affine = {
        f"{name}.{p}"
        for name, m in tent.model.named_modules()
        if m in batch_norm_layers(tent.model)
        for p in ("weight", "bias")
    }
    for k, v in tent.model.state_dict().items():
        changed = not torch.equal(v, start[k])
        assert changed == (k in affine), k
    tent.reset()
    torch.testing.assert_close(tent(x), first)  # reset = back to the source parameters and a fresh optimizer
    torch.testing.assert_close(first, BatchNormAdapt(model)(x))  # the first batch is predicted before any step


def test_memo_adapts_per_image_and_resets_to_the_source_weights() -> None:
    model = tiny_model()
    before = snapshot(model)
    memo = Memo(model, augmentations=4)
    x = shifted_batch(3)
    torch.manual_seed(0)
    out = memo(x)
    with torch.no_grad():
        plain = model(x)
    assert out.shape == plain.shape
    assert (out - plain).abs().max() > 1e-6  # each prediction came from adapted weights
    for k, v in memo.model.state_dict().items():  # ... which were reset after every image
        torch.testing.assert_close(v, before[k])
    for k, v in model.state_dict().items():  # and the source model was never touched
        torch.testing.assert_close(v, before[k])
    logits = torch.randn(5, 10)
    direct = logits.softmax(1).mean(0)
    assert marginal_entropy(logits).item() == pytest.approx(-(direct * direct.log()).sum().item(), rel=1e-5)


def test_flip_tta_averages_the_image_and_its_mirror() -> None:
    model = tiny_model()
    x = shifted_batch(4)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
        torch.testing.assert_close(flip_tta(model)(x), expected)


def test_settings_batch_the_stream_and_results_resume_from_the_cache(tmp_path) -> None:
    conditions = [Condition("clean", 0), Condition("gaussian_noise", 3), Condition("fog", 3), Condition("fog", 4)]
    n = 250  # images per condition: homogeneous batches of 200 + 50
    condition = torch.arange(4).repeat_interleave(n)
    stream = Stream(
        images=torch.randint(0, 256, (4 * n, 3, 32, 32), dtype=torch.uint8),
        labels=torch.randint(0, 10, (4 * n,)),
        condition=condition,
        conditions=conditions,
        order=torch.randperm(4 * n, generator=torch.Generator().manual_seed(0)),
    )
    homogeneous = stream.batches("homogeneous200")
    assert [[len(b) for b in e] for e in homogeneous] == [[200, 50], [200, 50], [200, 50, 200, 50]]  # fog: 3, 4
    assert all(len(condition[b].unique()) == 1 for e in homogeneous for b in e)
    (mixed,) = stream.batches("mixed64")
    assert torch.equal(torch.cat(mixed), stream.order) and {len(b) for b in mixed[:-1]} == {64}
    (single,) = stream.batches("single", family="weather", single_limit=300)
    assert all(len(b) == 1 for b in single) and 0 < len(single) < 300
    assert set(condition[torch.cat(single)].tolist()) <= {2, 3}

    model = tiny_model()
    counts, seconds, images = run_unit(Stateless(model), stream, stream.batches("homogeneous200", family="noise"))
    assert images == n and set(counts) == {"gaussian_noise/3"} and seconds > 0
    with torch.no_grad():
        expected = int((model(stream.images[condition == 1].float() / 255).argmax(1) == stream.labels[n : 2 * n]).sum())
    assert counts["gaussian_noise/3"] == (expected, n)
    UnitResult("none", "homogeneous200", "noise", counts, seconds, images).save(tmp_path)
    (loaded,) = load_all(tmp_path)
    row = summarise([loaded], "none", "homogeneous200")
    assert row is not None and row.accuracy == {"noise": pytest.approx(100 * expected / n)}
    assert "| none | homogeneous200 | - | " in markdown([row])
