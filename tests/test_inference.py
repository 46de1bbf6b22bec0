"""Using a trained policy: ``model.predict`` and ``forward``, ``rl-lightning predict`` from a checkpoint alone, and
``rl-lightning export`` to ONNX and TorchScript, checked on real env observations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_lightning import A2C, DDPG, DQN, PPO, SAC, TD3, RLDataModule, RLModule
from rl_lightning.cli import cli, main
from rl_lightning.export import export_policy
from rl_lightning.export import main as export_main
from tests.conftest import ROOT, quiet_trainer

BOX = gym.spaces.Box(-1.0, 1.0, (3,))
ACTION_BOX = gym.spaces.Box(np.array([-2.0, 0.0], dtype=np.float32), np.array([2.0, 0.5], dtype=np.float32))


def _models() -> list[tuple[RLModule, gym.Space]]:
    small: dict[str, Any] = {"hidden_sizes": [8]}
    return [
        (
            PPO(BOX, gym.spaces.Discrete(3, start=1), normalize_observations=True, **small),
            gym.spaces.Discrete(3, start=1),
        ),
        (PPO(BOX, ACTION_BOX, log_std_init=2.0, **small), ACTION_BOX),
        (A2C(BOX, gym.spaces.MultiDiscrete([3, 2]), **small), gym.spaces.MultiDiscrete([3, 2])),
        (A2C(BOX, gym.spaces.MultiBinary(4), **small), gym.spaces.MultiBinary(4)),
        (DQN(BOX, gym.spaces.Discrete(4), **small), gym.spaces.Discrete(4)),
        (SAC(BOX, ACTION_BOX, **small), ACTION_BOX),
        (TD3(BOX, ACTION_BOX, **small), ACTION_BOX),
        (DDPG(BOX, ACTION_BOX, **small), ACTION_BOX),
    ]


@pytest.mark.parametrize("index", range(8), ids=["ppo", "ppo-box", "a2c-multidiscrete", "a2c-multibinary", "dqn",
                                                 "sac", "td3", "ddpg"])  # fmt: skip
def test_predict_gives_env_actions_for_one_observation_or_a_batch(index: int) -> None:
    model, space = _models()[index]
    if isinstance(model.encoder, torch.nn.Module) and getattr(model.encoder, "normalize", False):
        model.encoder.update(torch.randn(64, 3) * 5 + 2)  # normalization happens inside predict and forward
    batch = np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32)
    actions = model.predict(batch)
    assert actions.shape == (16, *space.shape) and actions.dtype == space.dtype
    assert all(space.contains(a) for a in actions), actions
    one = model.predict(batch[0])
    assert one.shape == space.shape
    np.testing.assert_allclose(one, actions[0], rtol=0, atol=1e-6)  # a batch of 1 may round otherwise
    assert np.array_equal(model.predict(torch.from_numpy(batch)), actions)  # torch in, numpy out
    assert np.array_equal(model.predict(batch.astype(np.float64)), actions)  # float64: cast within its kind
    with torch.no_grad():
        forward = model(torch.from_numpy(batch)).numpy()
    assert np.array_equal(forward.astype(space.dtype), actions)
    sampled = model.predict(batch, deterministic=False)
    assert all(space.contains(a) for a in sampled)
    if isinstance(space, gym.spaces.Discrete):
        assert isinstance(one, np.integer)


def test_ppo_gaussian_actions_are_clipped_to_the_bounds_as_the_collector_does() -> None:
    space = gym.spaces.Box(-1e-4, 1e-4, (2,))
    model = PPO(BOX, space, hidden_sizes=[8])
    with torch.no_grad():
        model.head.mean.bias.fill_(1.0)  # the Gaussian's mean far outside the bounds
    assert np.array_equal(model.predict(np.zeros(3)), np.full(2, 1e-4, dtype=np.float32))


def test_predict_refuses_observations_of_another_shape_or_dtype() -> None:
    model = PPO(BOX, gym.spaces.Discrete(2), hidden_sizes=[8])
    with pytest.raises(ValueError, match=r"shape \(4,\).*expected \(3,\) \(one observation\) or \(batch, 3\)"):
        model.predict(np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 3\).*expected \(3,\)"):
        model.predict(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"dtype complex128.*expected float32"):
        model.predict(np.zeros(3, dtype=np.complex128))
    image = gym.spaces.Box(0, 255, (36, 36, 3), np.uint8)
    pixels = DQN(image, gym.spaces.Discrete(2), hidden_sizes=[8], cnn={"features": 16})
    with pytest.raises(ValueError, match=r"dtype float32.*expected uint8"):
        pixels.predict(np.zeros((36, 36, 3), dtype=np.float32))
    assert pixels.predict(np.zeros((2, 36, 36, 3), dtype=np.uint8)).shape == (2,)


def test_predict_takes_dict_observations_as_mappings() -> None:
    space = gym.spaces.Dict({"goal": gym.spaces.Discrete(3), "pos": gym.spaces.Box(-1, 1, (2,))})
    model = PPO(space, gym.spaces.Discrete(2), hidden_sizes=[8])
    one = model.predict({"goal": 2, "pos": np.array([0.5, -0.5], dtype=np.float32)})
    batch = model.predict({"goal": np.array([2, 0]), "pos": np.array([[0.5, -0.5], [0.0, 0.0]])})
    assert batch.shape == (2,) and one == batch[0]
    observation = TensorDict({"goal": torch.tensor([2, 0]), "pos": torch.tensor([[0.5, -0.5], [0.0, 0.0]])}, [2])
    assert np.array_equal(model.predict(observation), batch)
    with pytest.raises(ValueError, match=r"missing \['pos'\]: expected the keys of the observation space"):
        model.predict({"goal": 2})
    with pytest.raises(ValueError, match=r"pos has shape \(3,\).*expected \(2,\)"):
        model.predict({"goal": 2, "pos": np.zeros(3)})
    with pytest.raises(ValueError, match=r"Dict space.*Export a policy of Box"):
        export_policy(model, "never-written.onnx")
    assert not Path("never-written.onnx").exists()


# -- checkpoints: predict, export ------------------------------------------------------------------------------------


def _fit(tmp_path: Path, algorithm: type[RLModule], env_id: str, **model: Any) -> Path:
    """A few hundred frames of ``algorithm`` on ``env_id``; the path of its checkpoint."""
    pl.seed_everything(0)
    data = RLDataModule(env_id, num_envs=2, frames_per_batch=64, total_frames=192, eval_episodes=2, seed=0)
    module = algorithm(data.observation_space, data.action_space, hidden_sizes=[16], **model)
    trainer = quiet_trainer(tmp_path, val_check_interval=3)
    trainer.fit(module, datamodule=data)
    path = tmp_path / f"{algorithm.__name__}.ckpt"
    trainer.save_checkpoint(path)
    return path


def _env_observations(env_id: str, model: RLModule, count: int = 100) -> np.ndarray:
    """``count`` observations of the real env, stepped by the model's deterministic policy."""
    env = gym.make(env_id)
    observation, _ = env.reset(seed=1)
    seen = []
    for _ in range(count):
        seen.append(observation)
        observation, _, terminated, truncated, _ = env.step(model.predict(observation))
        if terminated or truncated:
            observation, _ = env.reset()
    env.close()
    return np.stack(seen)


# torch 2.13 deprecates TorchScript for torch.export; torch.jit.load still runs the files users already have.
JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:.*torch\\.jit\\..* is deprecated:DeprecationWarning")


CASES = [
    (PPO, "CartPole-v1", {"n_epochs": 1, "batch_size": 64, "normalize_observations": True}),
    (SAC, "Pendulum-v1", {"batch_size": 32, "init_random_frames": 64}),
    (PPO, "Pendulum-v1", {"n_epochs": 1, "batch_size": 64, "normalize_observations": True}),
    (DQN, "CartPole-v1", {"batch_size": 32, "init_random_frames": 64}),
]


@JIT_DEPRECATED
@pytest.mark.parametrize(("algorithm", "env_id", "options"), CASES, ids=["ppo-cartpole", "sac-pendulum",
                                                                          "ppo-pendulum", "dqn-cartpole"])  # fmt: skip
def test_exported_policies_act_as_predict_does_on_real_observations(
    algorithm: type[RLModule], env_id: str, options: dict[str, Any], tmp_path: Path
) -> None:
    import onnxruntime

    ckpt = _fit(tmp_path, algorithm, env_id, **options)
    model = algorithm.load_from_checkpoint(ckpt, map_location="cpu")
    observations = _env_observations(env_id, model)
    expected = model.predict(observations)
    for suffix in (".onnx", ".pt"):
        export_main(["--ckpt_path", str(ckpt), "--output", str(tmp_path / f"policy{suffix}")])
    session = onnxruntime.InferenceSession(str(tmp_path / "policy.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["action"], {"observation": observations})[0]
    one_by_one = np.concatenate([session.run(["action"], {"observation": o[None]})[0] for o in observations[:5]])
    scripted = torch.jit.load(str(tmp_path / "policy.pt"))
    with torch.inference_mode():
        from_torchscript = scripted(torch.from_numpy(observations)).numpy()
    for actions in (from_onnx, from_torchscript):
        assert actions.shape == expected.shape and actions.dtype == expected.dtype
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
        else:
            assert np.array_equal(actions, expected)
    assert np.array_equal(one_by_one, from_onnx[:5])  # a dynamic batch: 1 as well as 100


@JIT_DEPRECATED
@pytest.mark.filterwarnings("ignore:.*This property will be removed in 2.0.0:DeprecationWarning")  # torchmetrics'
def test_lightning_to_onnx_and_to_torchscript_work(tmp_path: Path) -> None:
    model = PPO(BOX, ACTION_BOX, hidden_sizes=[8]).eval()
    sample = torch.zeros(2, 3)
    model.to_onnx(tmp_path / "lightning.onnx", sample)
    with pytest.warns(Warning, match="to_torchscript"):
        scripted = model.to_torchscript(method="trace", example_inputs=sample)
    assert (tmp_path / "lightning.onnx").stat().st_size > 0
    assert torch.equal(scripted(sample), model(sample))


def test_export_refuses_unknown_suffixes_and_other_checkpoints_writing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = PPO(BOX, gym.spaces.Discrete(2), hidden_sizes=[8])
    with pytest.raises(ValueError, match=r"'\.h5' names no format.*\.onnx: ONNX.*\.pt: TorchScript"):
        export_policy(model, tmp_path / "policy.h5")
    with pytest.raises(ValueError, match=r"suffix '\.txt' names no format"):
        export_main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "policy.txt")])
    monkeypatch.setattr(sys, "argv", ["rl-lightning", "export", "--ckpt_path=x.ckpt", f"--output={tmp_path / 'p'}"])
    with pytest.raises(ValueError, match=r"suffix '\(none\)' names no format"):
        main()  # the command dispatches to rl_lightning.export
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="was not written by rl_lightning"):
        export_main(["--ckpt_path", str(other), "--output", str(tmp_path / "policy.onnx")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.ckpt"]


def test_a_checkpoint_of_another_algorithm_or_env_is_refused_naming_both(tmp_path: Path) -> None:
    ckpt = _fit(tmp_path, PPO, "CartPole-v1", n_epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="holds a PPO model and cannot be loaded into A2C"):
        A2C.load_from_checkpoint(ckpt)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="holds a PPO model and cannot be loaded into A2C"):
        cli(["predict", f"--ckpt_path={ckpt}", "--model=A2C"])
    with pytest.raises(ValueError, match=r"built for the observation_space Box.*\(4,\).*this model has Box.*\(6,\)"):
        cli(["predict", f"--ckpt_path={ckpt}", "--data.env_id=Acrobot-v1"])
    with pytest.raises(ValueError, match=r"output='episodes\.txt'.*expected \.csv.*or \.json"):
        cli(["predict", f"--ckpt_path={ckpt}", "--output=episodes.txt"])
    with pytest.raises(ValueError, match=r"--output='e\.csv' is an option of rl-lightning predict, not of validate"):
        cli(["validate", f"--ckpt_path={ckpt}", "--output=e.csv"])
    assert sorted(tmp_path.rglob("*")) == before


def _as_if_saved_on_a_gpu(ckpt: Path, to: Path) -> Path:
    """A copy of a checkpoint whose tensors say they were saved on ``cuda:0`` (``torch.save`` records each
    storage's device in the pickle): what a GPU run writes, for a machine without one."""
    with zipfile.ZipFile(ckpt) as source, zipfile.ZipFile(to, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename.endswith("data.pkl"):  # the location tags, as pickle protocol 2 writes strings
                assert b"X\x03\x00\x00\x00cpu" in content
                content = content.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            target.writestr(item, content)
    return to


def test_predict_from_the_checkpoint_alone_writes_the_episodes_beside_it(tmp_path: Path) -> None:
    fitted = _fit(tmp_path, PPO, "CartPole-v1", n_epochs=1, batch_size=64)
    ckpt = _as_if_saved_on_a_gpu(fitted, tmp_path / "gpu.ckpt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(ckpt, weights_only=True)  # plain torch.load fails on this machine; predict maps it
    run = cli(["predict", f"--ckpt_path={ckpt}"])
    assert type(run.model) is PPO and run.datamodule.env_id == "CartPole-v1"
    with (tmp_path / "gpu-episodes.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 == run.datamodule.eval_episodes  # the checkpoint's data: 2 evaluation episodes
    assert all(float(r["return"]) == int(r["length"]) for r in rows)  # CartPole: a reward of 1 per step
    model = PPO.load_from_checkpoint(fitted)
    for name, value in model.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], value), name
    assert not list(tmp_path.rglob("lightning_logs")) and not list(tmp_path.rglob("config.yaml"))

    # overrides change the env's settings; --output picks the file and format; --video records the episodes
    output = tmp_path / "scores" / "episodes.json"
    cli(["predict", f"--ckpt_path={ckpt}", "--data.eval_episodes=3", f"--output={output}", "--video=true"])
    record = json.loads(output.read_text())
    assert len(record["episodes"]) == 3 and record["env_id"] == "CartPole-v1"
    assert record["mean_length"] == pytest.approx(np.mean([e["length"] for e in record["episodes"]]))
    assert output.with_suffix(".mp4").stat().st_size > 0


def test_deploy_example_runs_the_onnx_policy_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    model = PPO(gym.spaces.Box(-np.inf, np.inf, (4,)), gym.spaces.Discrete(2), hidden_sizes=[8])
    export_policy(model, tmp_path / "policy.onnx")
    script = ROOT / "examples" / "deploy_onnx.py"
    blocked = (
        "import runpy, sys; sys.modules['torch'] = None; "  # `import torch` raises ImportError from here on
        f"sys.argv = [{str(script)!r}, '--policy', {str(tmp_path / 'policy.onnx')!r}, '--episodes', '2']; "
        f"runpy.run_path({str(script)!r}, run_name='__main__'); "
        "assert sys.modules['torch'] is None"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "episode 2: return" in done.stdout and "mean return over 2 episodes" in done.stdout


@JIT_DEPRECATED
@pytest.mark.filterwarnings("ignore:.*This property will be removed in 2.0.0:DeprecationWarning")  # torchmetrics'
@pytest.mark.parametrize("index", range(9), ids=["ppo", "ppo-box", "a2c-multidiscrete", "a2c-multibinary", "dqn",
                                                 "sac", "td3", "ddpg", "dqn-images"])  # fmt: skip
def test_every_algorithm_and_space_exports(index: int, tmp_path: Path) -> None:
    """Untrained policies of every algorithm and action space, and a CNN over uint8 frames, export to both formats
    and act as ``predict`` does."""
    import onnxruntime

    if index < 8:
        model, _ = _models()[index]
        observations = np.random.default_rng(0).uniform(-1, 1, (20, 3)).astype(np.float32)
    else:
        frames = gym.spaces.Box(0, 255, (36, 36, 3), np.uint8)
        model = DQN(frames, gym.spaces.Discrete(3), hidden_sizes=[8], cnn={"features": 16})
        observations = np.random.default_rng(0).integers(0, 256, (20, 36, 36, 3), dtype=np.uint8)
    expected = model.predict(observations)
    onnx_path, script_path = export_policy(model, tmp_path / "p.onnx"), export_policy(model, tmp_path / "p.pt")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["action"], {"observation": observations})[0]
    with torch.inference_mode():
        from_torchscript = torch.jit.load(str(script_path))(torch.from_numpy(observations)).numpy()
    for actions in (from_onnx, from_torchscript):
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
        else:
            assert np.array_equal(actions.astype(expected.dtype), expected)


def test_the_python_equivalents_of_predict(tmp_path: Path) -> None:
    """README's Python: load a checkpoint, predict on the env's observations, score it with trainer.predict and an
    EpisodeWriter."""
    from rl_lightning import EpisodeWriter, make_trainer

    ckpt = _fit(tmp_path, PPO, "CartPole-v1", n_epochs=1, batch_size=64)
    model = PPO.load_from_checkpoint(ckpt, map_location="cpu")
    env = gym.make("CartPole-v1")
    observation, _ = env.reset(seed=0)
    action = model.predict(observation)
    env.step(action)
    assert model.predict(np.stack([observation, observation])).shape == (2,)
    data = RLDataModule("CartPole-v1", eval_episodes=3, eval_envs=2)
    writer = EpisodeWriter(tmp_path / "episodes.json")
    trainer = make_trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_checkpointing=False)
    (episodes,) = trainer.predict(model, datamodule=data)
    assert episodes.batch_size == torch.Size([3])
    record = json.loads((tmp_path / "episodes.json").read_text())
    assert [e["length"] for e in record["episodes"]] == episodes["episode_length"].tolist()
    with pytest.raises(ValueError, match=r"output='e\.txt'.*expected \.csv"):
        EpisodeWriter("e.txt")


def test_an_export_that_fails_midway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(module: Any, args: Any, f: str, **kwargs: Any) -> None:
        Path(f).write_bytes(b"half a model")
        raise RuntimeError("the exporter failed")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(RuntimeError, match="the exporter failed"):
        export_policy(PPO(BOX, gym.spaces.Discrete(2), hidden_sizes=[8]), tmp_path / "policy.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_without_the_onnx_extra_names_it_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    model = PPO(gym.spaces.Box(-1.0, 1.0, (4,)), gym.spaces.Discrete(2), hidden_sizes=[8])
    with pytest.raises(ModuleNotFoundError, match=r"Exporting to ONNX needs 'onnxscript'.*rl-lightning\[onnx\].*\.pt"):
        export_policy(model, tmp_path / "policy.onnx")
    assert not any(tmp_path.iterdir())
