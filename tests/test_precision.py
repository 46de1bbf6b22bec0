"""Mixed precision: bf16 autocast really runs the networks in bfloat16 and training goes on; under float16's
gradient scaler, gradients are clipped after unscaling. The scaler's path runs on the CPU too, through Lightning's
``MixedPrecision`` plugin with a CPU ``GradScaler``; the GPU cases are skipped where CUDA is not available."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from rl_lightning import RLCallback
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


class RecordGradNorms(RLCallback):
    """Each optimizer step's gradient norm per parameter group, as the step applied them (after unscaling and
    clipping, which change the gradients in place), read by a step post-hook."""

    def __init__(self) -> None:
        self.norms: list[list[float]] = []

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            groups = [[p.grad for p in group["params"] if p.grad is not None] for group in optimizer.param_groups]
            self.norms.append([float(torch.nn.utils.get_total_norm(grads)) for grads in groups if grads])

        module.optimizers().optimizer.register_step_post_hook(record)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PRECISIONS = [
    pytest.param("cpu", "bf16-mixed", id="cpu-bf16"),
    pytest.param("cpu", "16-mixed", id="cpu-fp16-scaler"),  # Lightning's plugin with a CPU GradScaler
    pytest.param("gpu", "16-mixed", marks=CUDA, id="gpu-fp16"),
    pytest.param("gpu", "bf16-mixed", marks=CUDA, id="gpu-bf16"),
]


def _precision(accelerator: str, precision: str) -> dict[str, Any]:
    """Trainer arguments. ``precision="16-mixed"`` on a CPU becomes bf16-mixed; the plugin keeps float16 and its
    gradient scaler (PPO's and SAC's fused Adam: Lightning leaves the unscaling to the optimizer's step)."""
    if accelerator == "cpu" and precision == "16-mixed":
        return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    return {"accelerator": accelerator, "devices": 1, "precision": precision}


@pytest.mark.parametrize("algorithm", ["PPO", "SAC"])
@pytest.mark.parametrize(("accelerator", "precision"), PRECISIONS)
def test_mixed_precision_clips_gradients_after_unscaling(
    tmp_path: Path, algorithm: str, accelerator: str, precision: str
) -> None:
    norms = RecordGradNorms()
    max_norm = 1e-3
    settings = {"model": {"max_grad_norm": max_norm}, "callbacks": [norms], **_precision(accelerator, precision)}
    if algorithm == "PPO":
        trainer, model, data = tiny_ppo_run(tmp_path, **settings)
        trainer.fit(model, datamodule=data)
    else:
        trainer, model = tiny_sac_run(tmp_path, **settings)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision == "16-mixed")
    assert model.updates > 0
    # Unscaled, then clipped: every applied step's norms are at most max_grad_norm, and near it (clipping scaled
    # gradients would leave max_grad_norm / scale after unscaling: 6e-8 here). The scaler skips steps with inf.
    applied = [group for step in norms.norms for group in step if group == group and group != float("inf")]
    assert applied and max(applied) <= max_norm * 1.01
    assert statistics.median(applied) > max_norm * 0.5
