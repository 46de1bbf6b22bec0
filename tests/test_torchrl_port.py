"""The porting example: examples/torchrl_ppo_original.py (torchrl's ``Trainer``) and its port examples/torchrl_ppo.py,
and configs/torchrl_ppo.yaml through the CLI. Runs in the torchrl environment (``bash scripts/setup_torchrl.sh``),
skipped elsewhere."""

from __future__ import annotations

import csv
import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

pytest.importorskip(
    "torchrl", reason="torchrl is not importable here: run these tests in .venv-torchrl (scripts/setup_torchrl.sh)"
)

from tensordict import TensorDictBase

from rl_lightning import FunctionHook, keys
from rl_lightning.cli import RLLightningCLI, cli
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "torchrl_ppo.yaml"
OPS = ("scale_reward", "log_batch_reward", "log_advantage")
"""The functions the torchrl script registers with ``trainer.register_op``, in the order they run per batch."""


def recording(fn: Callable[[TensorDictBase], Any], calls: list[tuple[str, int, float, bool]]) -> Callable[..., Any]:
    """``fn``, recording its name and, of the batch it is given, the transitions, the mean reward (``scale_reward``
    runs first) and whether it holds advantages (GAE ran)."""

    @functools.wraps(fn)
    def op(batch: TensorDictBase) -> Any:
        reward = round(batch.get(keys.NEXT_REWARD).mean().item(), 6)
        calls.append((fn.__name__, batch.numel(), reward, keys.ADVANTAGE in batch.keys()))
        return fn(batch)

    return op


# torchrl 0.14's own notices, nothing the script can act on: its collector will add the InitTracker the policy's
# spec asks for, its Trainer registers itself at the 'optimizer' stage, and importing its collectors defines the
# weight updaters it deprecates.
TORCHRL_NOTICES = [
    pytest.mark.filterwarnings("ignore:.*missing transforms required by the policy.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*'optimizer' hook stage will be replaced.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*inherits from WeightUpdaterBase is deprecated.*:DeprecationWarning"),
]
TWO_BATCHES = pytest.mark.filterwarnings("ignore:.*smaller than the logging interval")  # logs every 10 batches


@pytest.mark.parametrize(
    "script",
    [pytest.param("torchrl_ppo_original", marks=TORCHRL_NOTICES), pytest.param("torchrl_ppo", marks=TWO_BATCHES)],
)
def test_the_registered_ops_run_at_the_same_points_in_torchrl_and_in_the_port(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both scripts on a budget of two collector batches, their register_op functions recorded: the same calls in the
    same order, with the same data (scaled rewards before the logging op, advantages in every minibatch)."""
    module = importlib.import_module(f"examples.{script}")
    calls: list[tuple[str, int, float, bool]] = []
    for name in OPS:
        monkeypatch.setattr(module, name, recording(getattr(module, name), calls))
    module.main(512, str(tmp_path))

    # per batch of 256 transitions: the batch op, the batch logging op, one post_optim_log per update (20 epochs)
    one_batch = [
        ("scale_reward", 256, 1.0, False),
        ("log_batch_reward", 256, 0.1, True),
        *[("log_advantage", 256, 0.1, True)] * 20,
    ]
    assert calls == one_batch * 2
    if script == "torchrl_ppo":  # the logging ops' dicts reach Lightning's logger
        (metrics,) = tmp_path.rglob("metrics.csv")
        with metrics.open() as file:
            rows = [r for r in csv.DictReader(file) if r["batch_reward"]]
        assert rows and float(rows[0]["batch_reward"]) == pytest.approx(0.1) and float(rows[0]["abs_advantage"]) > 0


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[RLLightningCLI, Path]:
    """``rl-lightning fit --config configs/torchrl_ppo.yaml`` with a tiny budget, and its ``last.ckpt``."""
    root = tmp_path_factory.mktemp("cli")
    run = cli(
        [
            "fit",
            f"--config={CONFIG}",
            "--data.total_frames=512",
            "--data.eval_episodes=2",
            "--model.init_args.n_epochs=2",
            "--model.init_args.batch_size=128",
            "--trainer.val_check_interval=2",
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
        ]
    )
    (ckpt,) = root.rglob("last.ckpt")
    return run, ckpt


def test_the_config_trains_through_the_cli_and_the_checkpoint_loads_without_the_modules(
    cli_fit: tuple[RLLightningCLI, Path],
) -> None:
    """The model class and the FunctionHook functions come from their import paths in the config, the functions run
    at their hooks; TorchRLPPO.load_from_checkpoint(path) builds the torchrl modules again from the hyperparameters."""
    from examples.torchrl_ppo import TorchRLPPO, log_advantage, log_batch_reward, scale_reward

    run, ckpt = cli_fit
    model = run.model
    assert isinstance(model, TorchRLPPO) and model.frames == 512 and model.updates == 2 * 2 * 2
    hooks = {h.fn: h for h in run.trainer.callbacks if isinstance(h, FunctionHook)}  # type: ignore[attr-defined]
    assert set(hooks) == {scale_reward, log_batch_reward, log_advantage}
    assert all(hook.convention == "torchrl" for hook in hooks.values())
    assert [hooks[f].calls for f in (scale_reward, log_batch_reward, log_advantage)] == [2, 2, model.updates]
    assert run.trainer.callback_metrics["batch_reward"] == pytest.approx(0.1)

    loaded = TorchRLPPO.load_from_checkpoint(ckpt)
    assert loaded.frames == 512 and loaded.hparams["n_epochs"] == 2 and loaded.hparams["hidden"] == 64
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    observation = torch.randn(8, 4)
    assert torch.equal(loaded(observation), model(observation))  # the same deterministic policy


def test_predict_from_the_checkpoint_alone(cli_fit: tuple[RLLightningCLI, Path], tmp_path: Path) -> None:
    """``rl-lightning predict --ckpt_path`` builds TorchRLPPO from the checkpoint's import path and hyperparameters."""
    from examples.torchrl_ppo import TorchRLPPO

    _, ckpt = cli_fit
    output = tmp_path / "episodes.csv"
    run = cli(["predict", f"--ckpt_path={ckpt}", f"--output={output}"])
    assert type(run.model) is TorchRLPPO and run.model.hparams["batch_size"] == 128
    with output.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 and all(float(r["return"]) == int(r["length"]) for r in rows)


def test_the_model_class_refuses_spaces_its_networks_do_not_fit() -> None:
    from examples.torchrl_ppo import TorchRLPPO

    box = gym.spaces.Box(-1, 1, (4,))
    with pytest.raises(ValueError, match=r"needs a Discrete action space, got Box.*Use e\.g\. CartPole-v1"):
        TorchRLPPO(box, gym.spaces.Box(-1, 1, (2,)))
    with pytest.raises(ValueError, match=r"needs a flat Box observation space, got Box\(.*\(2, 2\)"):
        TorchRLPPO(gym.spaces.Box(-1, 1, (2, 2)), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"needs observation_space and action_space.*links them from the data"):
        TorchRLPPO(None, gym.spaces.Discrete(2))
    acrobot = TorchRLPPO(gym.spaces.Box(-1, 1, (6,)), gym.spaces.Discrete(3), hidden=8)  # sized from the spaces
    assert acrobot.act(torch.zeros(5, 6))[keys.ACTION].shape == (5,)


SAC_CONFIG = ROOT / "configs" / "torchrl_sac.yaml"


@pytest.mark.filterwarnings("ignore:.*smaller than the logging interval")  # a budget of a few batches
def test_the_sac_example_and_config_train_and_the_checkpoint_loads_without_the_modules(tmp_path: Path) -> None:
    """examples/torchrl_sac.py on a tiny budget, then configs/torchrl_sac.yaml through the CLI with tiny overrides:
    TorchRLSAC (SACLoss on rl_lightning's replay) learns after its warm-up, and its checkpoint loads from the
    hyperparameters alone, target networks and temperature included."""
    from examples.torchrl_sac import TorchRLSAC, main

    example = main(512, str(tmp_path / "example"))
    assert example.frames == 512 and example.updates == 256  # one update per frame after 256 random ones

    run = cli(
        [
            "fit",
            f"--config={SAC_CONFIG}",
            "--data.total_frames=256",
            "--data.eval_episodes=1",
            "--model.init_args.hidden=16",
            "--model.init_args.batch_size=32",
            "--model.init_args.init_random_frames=128",
            "--model.init_args.utd_ratio=0.5",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    model = run.model
    assert isinstance(model, TorchRLSAC) and model.frames == 256 and model.updates == 64
    (ckpt,) = (tmp_path / "torchrl_sac_pendulum").rglob("last.ckpt")
    loaded = TorchRLSAC.load_from_checkpoint(ckpt)
    assert loaded.hparams["hidden"] == 16 and loaded.updates == 64
    state = model.state_dict()
    assert any("target" in name for name in state) and any("log_alpha" in name for name in state)
    for name, value in loaded.state_dict().items():
        assert torch.equal(state[name], value), name
    observation = torch.randn(8, 3)
    assert torch.equal(loaded(observation), model(observation))  # the same deterministic policy
    with pytest.raises(ValueError, match=r"needs a bounded flat Box action space, got Discrete\(2\)"):
        TorchRLSAC(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2))
