"""DDP with real processes: two gloo ranks on CPU train the same networks, count frames over both, and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rl_lightning.checkpoint import DATA_DIR, EXTERNAL, STAGING_DIR, RLCheckpointIO
from tests.conftest import ROOT
from tests.test_cli import _quick, _run
from tests.test_hooks import assert_reward_statistics_of_both_ranks

pytestmark = pytest.mark.slow


def _fit_ddp(
    config: str, tmp_path: Path, batches_per_rank: int, *extra: str, devices: int = 2, stderr: list[str] | None = None
) -> dict[int, dict[str, Any]]:
    """Runs ``config`` with ``devices`` DDP processes (one: no DDP) until ``batches_per_rank`` batches each;
    returns each rank's end state (and appends the run's stderr to ``stderr``)."""
    path = ROOT / "configs" / config
    fpb = yaml.safe_load(path.read_text())["data"]["frames_per_batch"]
    probe = tmp_path / "ranks"
    args = [a for a in _quick(path, tmp_path) if not a.startswith("--data.total_frames")]
    callback = {"class_path": "tests.probe.SaveRankState", "init_args": {"dirpath": str(probe)}}
    result = _run(
        "fit",
        *args,
        f"--data.total_frames={devices * batches_per_rank * fpb}",
        *(["--trainer.strategy=ddp", f"--trainer.devices={devices}"] if devices > 1 else []),
        f"--trainer.callbacks+={json.dumps(callback)}",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if stderr is not None:
        stderr.append(result.stderr)
    return {rank: torch.load(probe / f"rank{rank}.pt", weights_only=True) for rank in range(devices)}


def _assert_same_networks(ranks: dict[int, dict[str, Any]]) -> None:
    zero, one = ranks[0], ranks[1]
    assert zero["params"].keys() == one["params"].keys()
    for name, value in zero["params"].items():
        torch.testing.assert_close(value, one["params"][name], rtol=0, atol=0, msg=name)
    for a, b in zip(zero["optimizers"], one["optimizers"], strict=True):
        for index, state in a["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(value, b["state"][index][key], rtol=0, atol=0)
    for counter in ("frames", "updates", "batches", "global_step"):
        assert zero[counter] == one[counter], counter


def test_ppo_ranks_stay_identical_count_frames_over_both_and_resume(tmp_path: Path) -> None:
    fpb = yaml.safe_load((ROOT / "configs/ppo.yaml").read_text())["data"]["frames_per_batch"]
    normalize = "--model.init_args.normalize_observations=true"
    first = _fit_ddp("ppo.yaml", tmp_path, 2, normalize)
    _assert_same_networks(first)  # the normalizer's statistics too: the module syncs them, not DDP's broadcast
    assert first[0]["broadcast_buffers"] is first[1]["broadcast_buffers"] is False
    assert first[0]["params"]["encoder.count"] == 2 * 2 * fpb  # statistics of both ranks' observations
    assert first[0]["frames"] == 2 * 2 * fpb  # 2 batches on each of 2 ranks
    assert first[0]["updates"] > 0
    # each rank draws its own random numbers (exploration, minibatch order), though Lightning seeds them alike
    assert not torch.equal(first[0]["torch_rng"], first[1]["torch_rng"])

    ckpt = next(tmp_path.rglob("last.ckpt"))
    resumed = _fit_ddp("ppo.yaml", tmp_path, 4, normalize, f"--ckpt_path={ckpt}")
    _assert_same_networks(resumed)
    assert resumed[0]["frames"] == 2 * 4 * fpb
    assert resumed[0]["batches"] == 4
    assert resumed[0]["updates"] == 2 * first[0]["updates"]
    for name, value in first[0]["params"].items():  # training went on from the checkpoint
        if value.is_floating_point() and "encoder" not in name:
            assert not torch.equal(value, resumed[0]["params"][name]), name

    _, resumed_log = sorted(tmp_path.rglob("metrics.csv"))  # version_0, version_1
    with resumed_log.open() as f:
        frames = [float(r["frames"]) for r in csv.DictReader(f) if r["frames"]]
    assert frames[-1] == 2 * 4 * fpb and frames[0] > 2 * 2 * fpb  # the resumed run logs from where it stopped


def test_sac_ranks_stay_identical_and_resume_with_their_own_replay_buffers(tmp_path: Path) -> None:
    """Also checks, in the same runs, that RewardNormalizer's statistics are those of both ranks' returns."""
    fpb = yaml.safe_load((ROOT / "configs/sac.yaml").read_text())["data"]["frames_per_batch"]
    rewards = tmp_path / "rewards"
    normalizer = f"--trainer.callbacks+={json.dumps({'class_path': 'rl_lightning.callbacks.RewardNormalizer'})}"
    recorder = {"class_path": "tests.test_hooks.SaveRewardStats", "init_args": {"dirpath": str(rewards)}}
    first = _fit_ddp("sac.yaml", tmp_path, 2, f"--trainer.callbacks+={json.dumps(recorder)}", normalizer)
    _assert_same_networks(first)  # target networks included: they are part of the state dict
    assert_reward_statistics_of_both_ranks(rewards)
    assert first[0]["frames"] == 2 * 2 * fpb and first[0]["updates"] > 0
    observations = [first[rank]["buffer"]["data"]["observation"] for rank in (0, 1)]
    assert len(observations[0]) == 2 * fpb and not torch.equal(observations[0], observations[1])  # own envs

    ckpt = next(tmp_path.rglob("last.ckpt"))
    # Each rank wrote its buffer to files of its own, which rank zero moved beside the checkpoint: the .ckpt holds
    # references to them, nothing of a buffer went through the process group.
    written = torch.load(ckpt, weights_only=True)
    (references,) = [v for k, v in written["callbacks"].items() if k.startswith("ReplayBufferTrainer")]
    data_dir = ckpt.with_name(written[DATA_DIR])
    for rank in (0, 1):
        for name, reference in references["per_rank"][rank]["buffer"]["data"].items():
            assert reference[EXTERNAL].startswith(f"rank{rank}/"), name
        reference = references["per_rank"][rank]["buffer"]["data"]["observation"]
        raw = torch.from_file(str(data_dir / reference[EXTERNAL]), size=observations[rank].numel())
        assert torch.equal(raw.reshape(reference["shape"]), observations[rank])
    assert sorted(p.name for p in data_dir.iterdir()) == ["rank0", "rank1"]
    assert not list(tmp_path.rglob(STAGING_DIR))  # every staged file was moved, no folder left behind
    saved = RLCheckpointIO().load_checkpoint(ckpt)
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("ReplayBufferTrainer")]
    for rank in (0, 1):
        assert torch.equal(state["per_rank"][rank]["buffer"]["data"]["observation"], observations[rank])

    resumed = _fit_ddp("sac.yaml", tmp_path, 3, f"--ckpt_path={ckpt}", normalizer)
    _assert_same_networks(resumed)
    assert resumed[0]["frames"] == 2 * 3 * fpb
    for rank in (0, 1):  # each rank resumed with its own transitions and added one batch
        data = resumed[rank]["buffer"]["data"]["observation"]
        assert len(data) == 3 * fpb and torch.equal(data[: 2 * fpb], observations[rank])

    # On one rank: it takes saved rank 0's buffer; rank 1's goes unused, with a warning that says so.
    stderr: list[str] = []
    single = _fit_ddp("sac.yaml", tmp_path, 5, f"--ckpt_path={ckpt}", normalizer, devices=1, stderr=stderr)
    data = single[0]["buffer"]["data"]["observation"]
    assert len(data) == 3 * fpb and torch.equal(data[: 2 * fpb], observations[0])
    assert "holds the replay buffer of 2 rank(s), and this run has 1" in stderr[0]
    assert "the replay buffer of saved rank(s) 1 go unused" in stderr[0]


@pytest.mark.parametrize("config", ["a2c.yaml", "dqn.yaml", "ddpg.yaml", "td3.yaml"])
def test_every_algorithm_keeps_its_ranks_identical(tmp_path: Path, config: str) -> None:
    """PPO's and SAC's runs above check resumes and replay buffers too; the others train on the same bases."""
    fpb = yaml.safe_load((ROOT / "configs" / config).read_text())["data"]["frames_per_batch"]
    ranks = _fit_ddp(config, tmp_path, 2, "--trainer.limit_val_batches=0")
    _assert_same_networks(ranks)  # target networks included: they are part of the state dict
    assert ranks[0]["frames"] == 2 * 2 * fpb and ranks[0]["updates"] > 0
    assert ranks[0]["broadcast_buffers"] is False


def test_sac_resumed_on_more_ranks_keeps_its_update_schedule(tmp_path: Path) -> None:
    """A one-process checkpoint resumed on 2 ranks: the warm-up (counted in global frames) takes fewer batches
    there, yet each batch after it still gets utd_ratio x its transitions of updates, and the ranks, which start
    from the same saved buffer and random state, draw their own random numbers."""
    fpb = yaml.safe_load((ROOT / "configs/sac.yaml").read_text())["data"]["frames_per_batch"]
    warm_up = f"--model.init_args.init_random_frames={2 * fpb}"  # 2 batches on 1 rank, 1 batch on 2 ranks
    first = _fit_ddp("sac.yaml", tmp_path, 4, warm_up, devices=1)
    assert first[0]["updates"] == 2 * fpb  # utd_ratio 1: the 2 batches after the warm-up

    ckpt = next(tmp_path.rglob("last.ckpt"))
    stderr: list[str] = []
    resumed = _fit_ddp("sac.yaml", tmp_path, 4, warm_up, f"--ckpt_path={ckpt}", devices=2, stderr=stderr)
    _assert_same_networks(resumed)
    assert resumed[0]["batches"] == 6 and resumed[0]["updates"] == first[0]["updates"] + 2 * fpb
    assert not torch.equal(resumed[0]["torch_rng"], resumed[1]["torch_rng"])
    saved = first[0]["buffer"]["data"]["observation"]
    for rank in (0, 1):  # both ranks start from the one saved buffer (rank r takes saved rank r mod 1), as warned
        assert torch.equal(resumed[rank]["buffer"]["data"]["observation"][: len(saved)], saved)
    assert "holds the replay buffer of 1 rank(s), and this run has 2" in stderr[0]


def test_a_budget_below_one_batch_of_all_ranks_is_refused_before_any_step(tmp_path: Path) -> None:
    config = ROOT / "configs/ppo.yaml"
    fpb = yaml.safe_load(config.read_text())["data"]["frames_per_batch"]
    args = [a for a in _quick(config, tmp_path) if not a.startswith("--data.total_frames")]
    result = _run("fit", *args, f"--data.total_frames={fpb}", "--trainer.strategy=ddp", "--trainer.devices=2")
    assert result.returncode != 0
    assert f"total_frames={fpb} is below one batch of all 2 ranks" in result.stderr
    assert f"raise it to {2 * fpb} or more" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_whose_env_fails_ends_the_run_with_on_exception_checkpoint(tmp_path: Path, rank: int) -> None:
    """Lightning's OnExceptionCheckpoint saves on the failing rank alone: the checkpoint's gathering of every
    rank's state must not wait for ranks that are not saving (it used to hang both processes for good). Rank 0
    writes the checkpoint, with its own state only."""
    config = ROOT / "configs/ppo.yaml"
    env_index = 1000 * rank  # env 0 of that rank (training envs are seeded seed + 1000 x rank + index)
    wrapper = {"class_path": "tests.faulty_env.RaiseAfter", "init_args": {"steps": 40, "env_index": env_index}}
    saver = {"class_path": "lightning.pytorch.callbacks.OnExceptionCheckpoint", "init_args": {"dirpath": str(tmp_path)}}
    command = [sys.executable, "-m", "rl_lightning", "fit", *_quick(config, tmp_path, batches=8)]
    command += ["--trainer.strategy=ddp", "--trainer.devices=2", f"--data.wrappers=[{json.dumps(wrapper)}]"]
    command.append(f"--trainer.callbacks+={json.dumps(saver)}")
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # both ranks: Lightning starts rank 1 in the same session
        process.communicate()
        pytest.fail("the DDP run did not end after a rank's env failed")
    assert process.returncode != 0
    assert "EnvError" in stderr and "the simulator exploded" in stderr
    saved = RLCheckpointIO().load_checkpoint(tmp_path / "on_exception.ckpt")
    assert len(saved["rl_lightning"]["rng"]["per_rank"]) == 1 and saved["rl_lightning"]["frames"] > 0


def test_ppo_ranks_agree_on_target_kl_early_stops_with_async_envs(tmp_path: Path) -> None:
    """Each rank's KL differs (its own data); the early stop is agreed, so both ranks take the same steps (a rank
    stepping alone would hang in its gradient all-reduce, or leave the ranks' weights apart)."""
    config = yaml.safe_load((ROOT / "configs/ppo.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]
    most = 3 * model["n_epochs"] * (data["frames_per_batch"] // model["batch_size"])  # 3 batches, no stop
    ranks = _fit_ddp("ppo.yaml", tmp_path, 3, "--model.init_args.target_kl=0.002", "--data.vectorization=async")
    _assert_same_networks(ranks)  # counters included: updates, global_step
    assert 0 < ranks[0]["updates"] < most
