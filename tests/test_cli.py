"""The rl-lightning command: every config runs, overrides apply, validate/test evaluate a checkpoint."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from rl_lightning import PPO, FunctionHook, RLModule, build
from rl_lightning.cli import cli, main
from tests.conftest import ROOT, tiny_ppo_run

CONFIGS = sorted(
    c
    for c in (ROOT / "configs").glob("*.yaml")
    if not c.name.endswith("_atari.yaml") and not c.name.startswith("torchrl_")
)
"""The configs a few batches test as they are; the Atari ones (long games, big batches) run in tests/test_atari.py,
the torchrl_*.yaml ones in torchrl's environment (tests/test_torchrl_port.py)."""


def _model_class(class_path: str) -> type[RLModule]:
    module, _, name = class_path.rpartition(".")
    cls: type[RLModule] = getattr(importlib.import_module(module), name)
    return cls


def _quick(config: Path, tmp_path: Path, batches: int = 2) -> list[str]:
    """Overrides that run ``config`` for a few batches and write under ``tmp_path``."""
    parsed = yaml.safe_load(config.read_text())
    data = parsed["data"]
    off_policy = _model_class(parsed["model"]["class_path"]).trains_on_replay
    warm_up = ["--model.init_args.init_random_frames=0", "--model.init_args.batch_size=32"] if off_policy else []
    return [
        f"--config={config}",
        *warm_up,
        f"--data.total_frames={batches * data['frames_per_batch']}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=1",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_trains_for_a_few_batches(config: Path, tmp_path: Path) -> None:
    run = cli(["fit", *_quick(config, tmp_path)])
    assert run.model.frames == 2 * run.datamodule.frames_per_batch
    assert "val/episode_return" in run.trainer.callback_metrics
    assert list(tmp_path.rglob("metrics.csv")), "the CSV logger wrote nothing"
    assert list(tmp_path.rglob("last.ckpt")), "ModelCheckpoint wrote no last.ckpt"


def test_overrides_reach_the_data_and_the_model(tmp_path: Path) -> None:
    _, model, data = build(
        ROOT / "configs/ppo.yaml",
        [
            "--data.env_id=Acrobot-v1",
            "--data.num_envs=4",
            "--data.frames_per_batch=128",
            "--data.total_frames=256",
            "--model.lr=3e-4",
            "--model.batch_size=64",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    assert isinstance(model, PPO)
    assert data.env_id == "Acrobot-v1" and data.num_envs == 4
    assert model.hparams.lr == 3e-4
    assert model.observation_space.shape == (6,) and model.action_space.n == 3  # linked from the data


def test_build_an_algorithm_without_a_config(tmp_path: Path) -> None:
    trainer, model, data = build(
        algorithm="PPO",
        overrides=[
            "--data.total_frames=2048",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    assert isinstance(model, PPO) and data.env_id == "CartPole-v1"
    trainer.fit(model, datamodule=data)
    assert model.frames == 2048


def test_validate_and_test_evaluate_a_checkpoint(tmp_path: Path) -> None:
    config = ROOT / "configs/ppo.yaml"
    cli(["fit", *_quick(config, tmp_path)])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    for command, key in (("validate", "val/episode_return"), ("test", "test/episode_return")):
        run = cli(
            [
                command,
                f"--config={config}",
                f"--ckpt_path={ckpt}",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )
        assert key in run.trainer.callback_metrics


def test_resume_continues_the_counters(tmp_path: Path) -> None:
    config = ROOT / "configs/ppo.yaml"
    first = cli(["fit", *_quick(config, tmp_path, batches=2)])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    resumed = cli(["fit", *_quick(config, tmp_path, batches=4), f"--ckpt_path={ckpt}"])
    assert resumed.model.frames == 4 * 256
    assert resumed.model.loop.batches == 4
    assert resumed.model.updates == 2 * first.model.updates


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``rl-lightning *args`` in a session of its own: on a hang (e.g. DDP ranks that disagree) every process
    it started (DDP ranks, async env workers) is killed after ``timeout`` seconds and the test fails."""
    command = [sys.executable, "-m", "rl_lightning", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"rl-lightning {' '.join(args[:1])} did not end within {timeout} s; its stderr:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _exit_code_of_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int | str | None:
    """``rl-lightning *args`` through the command's entry point, in this process (a new interpreter would spend
    seconds importing torch and Lightning), for arguments that end in ``SystemExit``."""
    monkeypatch.setattr(sys, "argv", ["rl-lightning", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code


def test_help_and_print_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert _exit_code_of_main(monkeypatch, "--help") in (0, None)
    assert "fit" in capsys.readouterr().out
    assert _exit_code_of_main(monkeypatch, "fit", "--config=configs/ppo.yaml", "--print_config") in (0, None)
    config: dict[str, Any] = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["env_id"] == "CartPole-v1"
    assert config["data"]["class_path"] == "rl_lightning.RLDataModule"  # the default: configs need not name it
    assert config["model"]["class_path"] == "rl_lightning.PPO"


def test_bad_values_stop_the_cli_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NoSuchEnv-v9"):
        cli(
            [
                "fit",
                f"--config={ROOT / 'configs/ppo.yaml'}",
                "--data.env_id=NoSuchEnv-v9",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_bad_trainer_stops_the_cli_before_ddp_starts_its_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's flags are checked when the CLI builds the trainer: under DDP, a check in the fit would only
    run after Lightning's launcher has started the worker processes, each of which would fail on its own. Here
    the launcher cannot start any (it would start them with subprocess.Popen), so the check must come first."""

    def no_process(command: list[str], *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a process was started before the trainer was checked: {command}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    devices = (os.cpu_count() or 1) + 1
    with pytest.raises(ValueError, match=f"devices={devices} on the CPU starts {devices} processes"):
        cli(
            [
                "fit",
                f"--config={ROOT / 'configs/ppo.yaml'}",
                "--trainer.strategy=ddp",
                f"--trainer.devices={devices}",
                "--trainer.accelerator=cpu",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )
    assert not list(tmp_path.iterdir()), "a run refused at start wrote files"


def test_torch_threads_is_applied_and_checked(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        cli([*_quick(ROOT / "configs/ppo.yaml", tmp_path), "--torch_threads=1"], run=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="torch_threads=0 is invalid"):
        cli([*_quick(ROOT / "configs/ppo.yaml", tmp_path), "--torch_threads=0"], run=False)


def record_post_steps() -> None:
    """A plain function for FunctionHook, referenced from YAML by its import path."""
    CALLS.append(1)


CALLS: list[int] = []


def test_wrappers_and_function_hooks_from_yaml(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        """
data:
  wrappers:
    - class_path: gymnasium.wrappers.TimeLimit
      init_args: {max_episode_steps: 20}
trainer:
  callbacks+:
    - class_path: rl_lightning.FunctionHook
      init_args: {hook: post_steps, fn: tests.test_cli.record_post_steps, interval: 2}
"""
    )
    CALLS.clear()
    run = cli(["fit", *_quick(ROOT / "configs/ppo.yaml", tmp_path, batches=4), f"--config={extra}"])
    assert len(CALLS) == 2  # batches 1 and 3
    assert run.trainer.callback_metrics["rollout/episode_length"] <= 20  # the TimeLimit wrapper is applied


def test_sac_resume_restores_the_replay_buffer(tmp_path: Path) -> None:
    config = ROOT / "configs/sac.yaml"
    first = cli(["fit", *_quick(config, tmp_path, batches=2)])
    assert len(first.model.replay_buffer) == 128
    ckpt = next(tmp_path.rglob("last.ckpt"))
    resumed = cli(["fit", *_quick(config, tmp_path, batches=3), f"--ckpt_path={ckpt}"])
    assert resumed.model.frames == 3 * 64
    assert len(resumed.model.replay_buffer) == 3 * 64  # the checkpointed 128 plus one new batch
    assert resumed.model.updates == 3 * 64


def test_a_resumed_run_reseeds_its_envs_from_the_frames_done(tmp_path: Path) -> None:
    """Envs restart from reset on resume; they must not replay the run's first episodes, and every resume of
    one checkpoint must collect the same."""
    first_obs: list[torch.Tensor] = []
    record = FunctionHook("pre_steps_log", lambda batch: first_obs.append(batch["observation"][:, 0].clone()))
    last = ModelCheckpoint(tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer, model, data = tiny_ppo_run(
        tmp_path, data={"total_frames": 128}, callbacks=[record, last], enable_checkpointing=True
    )
    trainer.fit(model, datamodule=data)
    fresh = first_obs[0]
    resumed: list[torch.Tensor] = []
    for _ in range(2):
        first_obs.clear()
        trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 192}, callbacks=[record])
        trainer.fit(model, datamodule=data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
        assert len(first_obs) == 1  # one batch collected after the resume
        resumed.append(first_obs[0])
    assert torch.equal(resumed[0], resumed[1]) and not torch.equal(resumed[0], fresh)
