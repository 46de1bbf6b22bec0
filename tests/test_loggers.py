"""Every Lightning logger, chosen in YAML (configs/loggers/*.yaml over configs/ppo.yaml), really writes the
hyperparameters and the curves of a tiny fit, with env frames as the x-axis; a missing logger package stops the
run at start with the extra to install."""

from __future__ import annotations

import csv
import json
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rl_lightning.builders import make_trainer
from rl_lightning.cli import cli
from tests.conftest import ROOT

FRAMES_PER_BATCH = 64
BATCHES = 4
FRAMES = [FRAMES_PER_BATCH * (i + 1) for i in range(BATCHES)]  # the module's `frames` after each batch
VAL_FRAMES = FRAMES[1::2]  # val_check_interval=2

History = dict[str, list[tuple[int, float]]]
"""metric name -> [(x-axis step, value)] in logging order."""


def _fit(tmp_path: Path, logger: str, *overrides: str) -> Any:
    """A tiny PPO fit through the CLI with ``configs/loggers/<logger>.yaml`` as the second config."""
    return cli(
        [
            "fit",
            f"--config={ROOT / 'configs/ppo.yaml'}",
            f"--config={ROOT / 'configs/loggers' / f'{logger}.yaml'}",
            "--model.init_args.n_epochs=2",
            "--model.init_args.batch_size=32",
            "--model.init_args.hidden_sizes=[16]",
            "--data.num_envs=4",
            f"--data.frames_per_batch={FRAMES_PER_BATCH}",
            f"--data.total_frames={FRAMES[-1]}",
            "--data.eval_episodes=2",
            "--trainer.val_check_interval=2",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            *overrides,
        ]
    )


# -- reading back what each logger wrote ---------------------------------------------------------------------------


def _read_csv(run: Any, tmp_path: Path) -> tuple[dict[str, Any], History]:
    log_dir = Path(run.trainer.logger.log_dir)
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    history: History = {}
    with open(log_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value != "":
                    history.setdefault(key, []).append((int(row["step"]), float(value)))
    return hparams, history


def _read_tensorboard(run: Any, tmp_path: Path) -> tuple[dict[str, Any], History]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(run.trainer.logger.log_dir)
    events.Reload()
    history = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: v.string_value or v.number_value or v.bool_value for k, v in start.hparams.items()}
    return hparams, history


def _wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``).

    wandb >= 0.19 no longer ships a Python reader (``wandb.sdk.internal.datastore``) and an offline run writes
    neither ``wandb-summary.json`` nor ``config.yaml``; the file is LevelDB's log format (32 KiB blocks of
    records with a 7-byte header: crc32c, length, type) after a 7-byte W&B header, holding ``wandb.proto``
    ``Record`` messages.
    """
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    block, header = 32768, 7
    pos, pending = 7, b""
    while pos + header <= len(raw):
        if block - pos % block < header:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + header])
        pending += raw[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/LAST
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated protobuf code
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item: Any) -> str:
    """A config or history item's name: ``key``, or ``nested_key`` joined (wandb-core writes either)."""
    return str(item.key or "/".join(item.nested_key))


def _read_wandb(run: Any, tmp_path: Path) -> tuple[dict[str, Any], History]:
    import json
    import time

    run.trainer.logger.experiment.finish()
    (path,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    # finish() can return before wandb-core has written the rest of the file: wait for its final "exit" record
    for _ in range(300):
        records = list(_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    hparams: dict[str, Any] = {}
    history: History = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "config":
            hparams.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            step = int(row.pop("trainer/global_step"))  # the x-axis WandbLogger defines for every metric
            for key, value in row.items():
                if not key.startswith("_"):
                    history.setdefault(key, []).append((step, float(value)))
    return hparams, history


def _read_mlflow(run: Any, tmp_path: Path) -> tuple[dict[str, Any], History]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logger = run.trainer.logger
    data = client.get_run(logger.run_id).data
    history = {k: [(m.step, m.value) for m in client.get_metric_history(logger.run_id, k)] for k in data.metrics}
    config = client.download_artifacts(logger.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(config).read_text())["data"]["init_args"]["env_id"] == "CartPole-v1"  # the CLI config
    return dict(data.params), history


READERS: dict[str, tuple[Callable[[Any, Path], tuple[dict[str, Any], History]], Callable[[Path], list[str]]]] = {
    "csv": (_read_csv, lambda tmp: [f"--trainer.logger.init_args.save_dir={tmp}"]),
    "tensorboard": (_read_tensorboard, lambda tmp: [f"--trainer.logger.init_args.save_dir={tmp}"]),
    "wandb": (
        _read_wandb,
        lambda tmp: [f"--trainer.logger.init_args.save_dir={tmp}", "--trainer.logger.init_args.offline=true"],
    ),
    "mlflow": (
        _read_mlflow,
        lambda tmp: [
            f"--trainer.logger.init_args.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"--trainer.logger.init_args.artifact_location={tmp}/mlartifacts",
        ],
    ),
}


@pytest.fixture
def _wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))


@pytest.mark.usefixtures("_wandb_offline")
@pytest.mark.parametrize("logger", list(READERS))
def test_logger_writes_hyperparameters_and_curves_over_frames(logger: str, tmp_path: Path) -> None:
    read, overrides = READERS[logger]
    run = _fit(tmp_path, logger, *overrides(tmp_path))
    assert run.model.frames == FRAMES[-1]
    hparams, history = read(run, tmp_path)

    # the model's and the data's init args
    assert float(hparams["lr"]) == pytest.approx(0.001) and int(hparams["n_epochs"]) == 2
    assert hparams["env_id"] == "CartPole-v1" and int(hparams["frames_per_batch"]) == FRAMES_PER_BATCH

    # the curves, each point at the env frames it was logged at (not Lightning's optimizer-step count)
    assert run.trainer.global_step == BATCHES * 2 * 2  # 2 epochs x 2 minibatches per batch: not the x-axis
    for key in ("train/loss", "rollout/episode_return", "time/fps"):
        assert [step for step, _ in history[key]] == FRAMES, key
    assert all(step == value for step, value in history["frames"]) and set(FRAMES) <= {s for s, _ in history["frames"]}
    assert [step for step, _ in history["val/episode_return"]] == VAL_FRAMES
    assert all(value > 0 for _, value in history["val/episode_return"])  # CartPole pays 1 per step


def test_logger_snippets_are_valid_second_configs(capsys: pytest.CaptureFixture[str]) -> None:
    snippets = sorted((ROOT / "configs/loggers").glob("*.yaml"))
    assert [s.stem for s in snippets] == ["csv", "mlflow", "tensorboard", "wandb"]
    for snippet in snippets:
        with pytest.raises(SystemExit) as printed:
            cli(["fit", f"--config={ROOT / 'configs/ppo.yaml'}", f"--config={snippet}", "--print_config"])
        assert printed.value.code == 0
        logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
        expected = yaml.safe_load(snippet.read_text())["trainer"]["logger"]
        assert logger["class_path"] == expected["class_path"]
        assert logger["init_args"].items() >= expected["init_args"].items()  # the snippet's settings, not ppo.yaml's


# -- a logger whose package is missing stops at start ----------------------------------------------------------------

MISSING = {
    "wandb": ("wandb", ["wandb"]),
    "mlflow": ("mlflow", ["mlflow"]),
    "tensorboard": ("tensorboard", ["tensorboard", "tensorboardX"]),
}


@pytest.mark.parametrize("logger", list(MISSING))
def test_a_missing_logger_package_names_the_extra_before_training(
    logger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra, packages = MISSING[logger]
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)  # makes `import <package>` fail
    with pytest.raises(ModuleNotFoundError, match=rf"pip install 'rl-lightning\[{extra}\]'"):
        _fit(tmp_path, logger, *READERS[logger][1](tmp_path))
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "mlflow.db").exists()


def test_make_trainer_names_the_extra_of_a_missing_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(save_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ModuleNotFoundError, match=r"TensorBoardLogger.*rl-lightning\[tensorboard\]"):
        make_trainer(logger=[logger], default_root_dir=tmp_path)


# -- --ckpt_path last finds the checkpoints wherever ModelCheckpoint put them ------------------------------------------

LAST_CHECKPOINT_SETUPS: dict[str, Callable[[Path], list[str]]] = {
    # no local log directory: checkpoints under <default_root_dir>/<experiment id>/<run id>/checkpoints
    "mlflow": lambda tmp: [
        f"--config={ROOT / 'configs/loggers/mlflow.yaml'}",
        f"--trainer.default_root_dir={tmp}",
        *READERS["mlflow"][1](tmp),
    ],
    "no logger": lambda tmp: ["--trainer.logger=false"],  # <default_root_dir>/checkpoints
    "dirpath": lambda tmp: [  # a ModelCheckpoint with a directory of its own
        f"--trainer.logger.init_args.save_dir={tmp}",
        "--trainer.callbacks="
        + json.dumps(
            [{"class_path": "ModelCheckpoint", "init_args": {"dirpath": str(tmp / "own"), "save_last": True}}]
        ),
    ],
}


@pytest.mark.filterwarnings("ignore:.*Checkpoint directory .* exists and is not empty")  # the resumed run's
@pytest.mark.parametrize("setup", list(LAST_CHECKPOINT_SETUPS))
def test_ckpt_path_last_resumes_from_where_the_checkpoints_went(setup: str, tmp_path: Path) -> None:
    overrides = LAST_CHECKPOINT_SETUPS[setup](tmp_path)
    first = _fit(tmp_path, "csv", *overrides)
    (last,) = tmp_path.rglob("last.ckpt")
    assert first.trainer.checkpoint_callback is not None
    assert last.parent == Path(first.trainer.checkpoint_callback.dirpath)
    resumed = _fit(tmp_path, "csv", *overrides, f"--data.total_frames={2 * FRAMES[-1]}", "--ckpt_path=last")
    assert resumed.config_init["fit"]["ckpt_path"] == str(last)
    assert resumed.model.loop.batches == 2 * BATCHES  # went on from the first run's batches to the new budget
