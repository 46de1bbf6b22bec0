"""FunctionHook: a plain function at one hook point of the RL loop, every ``interval`` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from tensordict import TensorDict

from rl_lightning import PPO, RLDataModule, keys
from rl_lightning.callbacks.function_hook import FunctionHook
from rl_lightning.callbacks.rl_callback import RL_HOOKS, RLCallback
from tests.conftest import quiet_trainer


class Recorder:
    """A function that records its arguments and returns a numbered result."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> dict[str, int]:
        self.calls.append(args)
        return {"call": len(self.calls)}


@pytest.mark.parametrize("name", ["post_optim_log", "on_post_optim_log"])
def test_hook_name_with_or_without_prefix(name: str) -> None:
    fn = Recorder()
    hook = FunctionHook(name, fn)
    assert hook.implemented_rl_hooks() == {"on_post_optim_log"}
    # fn gets the hook's data arguments only, and what it returns is what the hook returns.
    assert hook.on_post_optim_log("trainer", "module", "batch") == {"call": 1}
    assert fn.calls == [("batch",)]
    # The other hooks stay the no-ops of RLCallback.
    assert hook.on_post_steps_log("trainer", "module", "batch") is None
    assert hook.on_post_optim("trainer", "module") is None
    assert len(fn.calls) == 1


def test_hooks_without_data_arguments() -> None:
    fn = Recorder()
    hook = FunctionHook("post_optim", fn)
    assert hook.on_post_optim("trainer", "module") == {"call": 1}
    assert fn.calls == [()]


def test_unknown_hook_lists_the_stages() -> None:
    with pytest.raises(ValueError, match=r"hook='post_optimizer' is not a hook point of the RL loop") as err:
        FunctionHook("post_optimizer", print)
    stages = [name.removeprefix("on_") for name in RL_HOOKS]
    assert f"expected one of: {', '.join(stages)}." in str(err.value)


@pytest.mark.parametrize(
    ("interval", "fn", "message"),
    [(0, print, r"interval=0 is invalid: expected an integer >= 1"), (1, "not callable", r"fn='not callable' is not")],
)
def test_bad_arguments(interval: int, fn: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FunctionHook("post_optim", fn, interval=interval)


def test_interval() -> None:
    fn = Recorder()
    hook = FunctionHook("batch_process", fn, interval=3)
    results = [hook.on_batch_process("trainer", "module", f"batch{i}") for i in range(1, 9)]
    # Calls 1, 4, 7 run fn; the skipped ones return None.
    assert [args[0] for args in fn.calls] == ["batch1", "batch4", "batch7"]
    assert results == [{"call": 1}, None, None, {"call": 2}, None, None, {"call": 3}, None]


def test_state_dict_round_trip() -> None:
    first = FunctionHook("post_steps", Recorder(), interval=3)
    for _ in range(5):
        first.on_post_steps("trainer", "module")
    assert first.state_dict() == {"calls": 5}

    fn = Recorder()
    resumed = FunctionHook("post_steps", fn, interval=3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.calls == 5
    # Calls 6 and 7 of the run: only the 7th runs fn, as it would have without the restart.
    assert resumed.on_post_steps("trainer", "module") is None
    assert resumed.on_post_steps("trainer", "module") == {"call": 1}
    assert resumed.state_dict() == {"calls": 7}


def test_is_an_rl_callback() -> None:
    assert isinstance(FunctionHook("post_steps", print), RLCallback)


TORCHRL_STAGES = (
    "pre_epoch",
    "pre_epoch_log",
    "post_epoch",
    "post_epoch_log",
    "post_loss",
    "optimizer",
    "post_optim_complete_log",
)


def test_torchrl_convention_passes_what_torchrls_trainer_passes(tmp_path: Path) -> None:
    """``convention="torchrl"``: at the seven stages where torchrl's Trainer passes other arguments, a function written
    for ``register_op`` gets torchrl's (the collector batch, the minibatch, ``(losses, clip_grad_norm, clip_norm,
    index)``, ``(optim_steps, average_losses)``, or nothing), in a real PPO fit of 2 batches x 2 epochs x 2 updates."""
    recorders = {stage: Recorder() for stage in TORCHRL_STAGES}
    batches: list[TensorDict] = []

    class Batches(RLCallback):
        def on_pre_optim_steps(self, trainer: pl.Trainer, module: Any) -> None:
            batches.append(module.loop.batch)

    def in_place(batch: TensorDict) -> TensorDict:
        recorders["pre_epoch"](batch)
        return batch  # torchrl's pre_epoch ops return the batch the epoch trains on

    hooks = [FunctionHook(s, recorders[s], convention="torchrl") for s in TORCHRL_STAGES if s != "pre_epoch"]
    hooks += [FunctionHook("pre_epoch", in_place, convention="torchrl"), Batches()]
    hooks.insert(0, FunctionHook("optimizer", lambda *args: None, convention="torchrl"))  # index 0; the recorder's 1
    data = RLDataModule("CartPole-v1", num_envs=2, frames_per_batch=32, total_frames=64)
    model = PPO(data.observation_space, data.action_space, n_epochs=2, batch_size=16, max_grad_norm=0.5)
    quiet_trainer(tmp_path, callbacks=hooks, log_every_n_steps=1).fit(model, datamodule=data)

    assert len(batches) == 2 and all(keys.ADVANTAGE in b.keys() for b in batches)  # after prepare_batch
    epochs = [batches[0], batches[0], batches[1], batches[1]]
    for stage in ("pre_epoch", "pre_epoch_log", "post_epoch_log"):
        assert [call[0] for call in recorders[stage].calls] == epochs, stage
    assert recorders["post_epoch"].calls == [()] * 4
    minibatches = recorders["post_loss"].calls
    assert len(minibatches) == 8 and all(len(c) == 1 and c[0].batch_size == (16,) for c in minibatches)
    optimizer = recorders["optimizer"].calls
    assert len(optimizer) == 8
    for losses, clip_grad_norm, clip_norm, index in optimizer:
        assert "loss_objective" in losses.keys() and (clip_grad_norm, clip_norm, index) == (True, 0.5, 1)
    complete = recorders["post_optim_complete_log"].calls
    assert [steps for steps, _ in complete] == [4, 8]  # torchrl's optim_steps: the updates so far
    assert all("loss_objective" in losses.keys() for _, losses in complete)
    assert model.updates == 8  # the functions' results (None, a dict) left the module's own steps to it


def test_torchrl_convention_refuses_a_new_batch_at_pre_epoch(tmp_path: Path) -> None:
    data = RLDataModule("CartPole-v1", num_envs=2, frames_per_batch=32, total_frames=32)
    model = PPO(data.observation_space, data.action_space, n_epochs=1, batch_size=16)
    hook = FunctionHook("pre_epoch", lambda batch: batch.clone(), convention="torchrl")
    with pytest.raises(ValueError, match=r"returned a new batch at pre_epoch.*Modify the batch in place"):
        quiet_trainer(tmp_path, callbacks=[hook]).fit(model, datamodule=data)


def test_unknown_convention_is_refused() -> None:
    with pytest.raises(ValueError, match=r"convention='torchrl0'"):
        FunctionHook("post_optim", print, convention="torchrl0")  # type: ignore[arg-type]
