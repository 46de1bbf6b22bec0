"""``compile=True``: the MLPs are compiled in place, train, and keep their parameter names (checkpoints load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from rl_lightning import PPO, SAC
from tests.conftest import quiet_trainer, tiny_ppo_run
from tests.test_algorithms import TINY, tiny
from tests.test_sac import tiny_sac_run

pytestmark = pytest.mark.slow  # compiling takes tens of seconds on a CPU


def _compiled(model: nn.Module) -> list[bool]:
    return [type(m).__name__ == "_CompiledSequential" for m in model.modules() if isinstance(m, nn.Sequential)]


def test_ppo_and_sac_train_compiled_with_the_eager_parameter_names(tmp_path: Path) -> None:
    trainer, ppo, data = tiny_ppo_run(tmp_path, model={"compile": True}, max_steps=2)
    before = {k: v.clone() for k, v in ppo.state_dict().items()}
    compiled_before = dict(counters["stats"])
    trainer.fit(ppo, datamodule=data)
    assert counters["stats"]["unique_graphs"] > compiled_before.get("unique_graphs", 0)  # dynamo really compiled
    assert all(_compiled(ppo)) and len(_compiled(ppo)) == 2
    eager = PPO(data.observation_space, data.action_space, hidden_sizes=[16])
    assert ppo.state_dict().keys() == eager.state_dict().keys()
    eager.load_state_dict(ppo.state_dict())
    assert any(not torch.equal(before[k], v) for k, v in ppo.state_dict().items())  # it trained

    _, sac = tiny_sac_run(tmp_path / "sac", model={"compile": True})  # fits
    assert all(_compiled(sac)) and sac.updates > 0
    eager_sac = SAC(sac.observation_space, sac.action_space, hidden_sizes=[16])
    assert sac.state_dict().keys() == eager_sac.state_dict().keys()


@pytest.mark.parametrize("name", ["A2C", "DDPG", "DQN", "TD3"])
def test_the_other_algorithms_train_compiled(tmp_path: Path, name: str) -> None:
    options = {**TINY[name][1], "compile": True}
    if "init_random_frames" in options:  # learn from the first batch: the losses compile too
        options["init_random_frames"] = 0
    model, data = tiny(name, total_frames=64, arguments=options)
    quiet_trainer(tmp_path).fit(model, datamodule=data)
    assert _compiled(model) and all(_compiled(model)) and model.updates > 0
    eager = type(model)(model.observation_space, model.action_space, **TINY[name][1])
    assert model.state_dict().keys() == eager.state_dict().keys()
