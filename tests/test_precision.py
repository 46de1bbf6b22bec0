"""Mixed precision on CPU: bf16 autocast really runs the networks in bfloat16, and training goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import tiny_ppo_run
from tests.test_sac import tiny_sac_run


def _record_dtypes(network: torch.nn.Module) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()

    def hook(module: Any, args: Any, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():  # training steps, not the collector's inference
            seen.add(output.dtype)

    network.register_forward_hook(hook)
    return seen


def test_ppo_trains_under_bf16_autocast(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, precision="bf16-mixed")
    seen = _record_dtypes(model.actor_body[0])
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=data)
    assert seen == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert trainer.global_step == model.updates > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sac_trains_under_bf16_autocast(tmp_path: Path) -> None:
    trainer, model = tiny_sac_run(tmp_path, precision="bf16-mixed", model={"max_grad_norm": 1.0})
    assert trainer.precision == "bf16-mixed"
    assert model.updates > 0 and trainer.global_step == model.updates
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_16_mixed_on_cpu_becomes_bf16_mixed_with_a_warning(tmp_path: Path) -> None:
    """Lightning's answer to float16 AMP on a CPU: it says so and uses bfloat16 instead."""
    with pytest.warns(UserWarning, match=r"fp16 is not supported on CPU. Using `precision='bf16-mixed'` instead"):
        trainer, model, data = tiny_ppo_run(tmp_path, precision="16-mixed", max_steps=1)
    trainer.fit(model, datamodule=data)
    assert trainer.precision == "bf16-mixed"
