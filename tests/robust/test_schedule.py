"""Fine-tuning schedules: AdvBN's paper shape (step decay from 1e-3), no warm-up needed after it."""

from __future__ import annotations

import pytest

from dyntta.robust import TrainingStrategy, create_strategy
from dyntta.train.loop import lr_schedule


def test_step_and_constant_schedules_without_warmup() -> None:
    step = lr_schedule("step", total_steps=100, warmup_steps=0)
    assert [step(i) for i in (0, 49, 50, 99)] == [1.0, 1.0, 0.1, 0.1]
    constant = lr_schedule("constant", total_steps=100, warmup_steps=0)
    assert {constant(i) for i in range(100)} == {1.0}
    cosine = lr_schedule("cosine", total_steps=100, warmup_steps=0)
    assert cosine(0) == 1.0 and 0 < cosine(99) < 0.01  # no warm-up ramp: a fine-tune starts at its peak
    warm = lr_schedule("step", total_steps=100, warmup_steps=10)
    assert warm(0) == pytest.approx(0.1) and warm(9) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_schedule("linear", 10, 0)


def test_advbn_brings_its_papers_schedule_and_learning_rate() -> None:
    advbn = create_strategy("advbn")
    assert (advbn.schedule, advbn.default_lr) == ("step", 1e-3)
    assert (TrainingStrategy.schedule, TrainingStrategy.default_lr) == ("cosine", None)
