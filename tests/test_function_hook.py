"""FunctionHook: a plain function at one hook point of the RL loop, every ``interval`` calls."""

from __future__ import annotations

from typing import Any

import pytest

from rl_lightning.callbacks.function_hook import FunctionHook
from rl_lightning.callbacks.rl_callback import RL_HOOKS, RLCallback


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
