"""Offline RL: datasets of stored transitions, and a DataModule that trains on them without stepping an env.

A dataset is a directory::

    dataset.json     what it holds: env id, spaces, wrappers, transitions, the behaviour policy, its noise and
                     the mean return of its episodes (:class:`DatasetInfo`)
    transitions/     a memory-mapped TensorDict (tensordict's ``memmap`` format, read by tensordict 0.14 and 0.15):
                     ``[num_envs, T]`` transitions with the collector's keys (:mod:`rl_lightning.keys`), each env's
                     trajectory in time order

:func:`generate_dataset` records one with a trained model's deterministic policy plus Gaussian noise, through
rl_lightning's :class:`~rl_lightning.collector.Collector`, so the transitions are exactly what a training batch holds
(``("next", "observation")`` the true final observation at episode ends, ``terminated`` and ``truncated`` apart,
``("next", "episode_return")`` where an episode ended). :func:`write_dataset` stores transitions from elsewhere,
:func:`load_dataset` reads one, and :class:`OfflineDataModule` trains any :class:`~rl_lightning.RLModule` whose loss
reads transitions (e.g. torchrl's ``IQLLoss`` or ``CQLLoss`` in a ``TorchRLModule``) on shuffled batches of it.

The format is tensordict's memory-mapped directory rather than the files of rl_lightning's
:class:`~rl_lightning.ReplayBuffer` (whose memmap storage is a scratch space: a ring of slots, frame-stack pools and
free lists, not meant to be read by anything but the buffer).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torch.utils.data import DataLoader

from rl_lightning import keys
from rl_lightning._checks import check_int, check_non_negative
from rl_lightning.collector import Collector, Observation, close_envs
from rl_lightning.data import Agent, RLDataModule, _as_is, _Rollouts
from rl_lightning.envs import WrapperSpec, make_vec_env
from rl_lightning.spaces import space_from_dict, space_to_dict

FORMAT = "rl_lightning.offline/1"
"""The ``format`` entry of ``dataset.json``: a dataset written in another format is refused when loaded."""
INFO_FILE = "dataset.json"
TRANSITIONS_DIR = "transitions"
REQUIRED_KEYS = keys.TRANSITION_KEYS
"""The keys every stored transition has (what torchrl's offline losses read)."""
_CHUNK_STEPS = 1024
"""Vector steps collected per chunk while a dataset is generated (memory stays bounded by one chunk)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds: the contents of its ``dataset.json``.

    Args:
        env_id: the gymnasium id of the env the transitions come from (and evaluation runs in).
        observation_space: the env's observation space (:func:`~rl_lightning.spaces.space_to_dict`).
        action_space: the env's action space (:func:`~rl_lightning.spaces.space_to_dict`).
        transitions: stored transitions.
        episodes: episodes that ended inside the data (the last ones of each env may be cut off).
        behaviour_mean_return: mean return of those episodes (``nan`` without any).
        behaviour_return_std: standard deviation of their returns.
        policy: what collected the data, e.g. ``"TD3 + N(0, 0.5)"``.
        noise_std: standard deviation of the Gaussian noise added to the policy's actions, in units of half the
            action range (TD3's ``exploration_noise`` scale); 0 without noise.
        num_envs: envs stepped together (the stored batch is ``[num_envs, transitions / num_envs]``).
        seed: the seed the envs were reset with (``None``: unseeded).
        frame_skip: env frames per stored transition (:class:`~rl_lightning.envs.FrameSkip`).
        wrappers: the gymnasium wrappers around each env (import paths or ``class_path``/``init_args`` dicts).
        env_kwargs: keyword arguments of ``gym.make``.
        dataset_id: a random id written with the data: a checkpoint trained on it refuses to resume on another.
        format: the dataset format, :data:`FORMAT`.
    """

    env_id: str
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    transitions: int
    episodes: int
    behaviour_mean_return: float
    behaviour_return_std: float
    policy: str
    noise_std: float = 0.0
    num_envs: int = 1
    seed: int | None = None
    frame_skip: int = 1
    wrappers: list[WrapperSpec] | None = None
    env_kwargs: dict[str, Any] | None = None
    dataset_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    format: str = FORMAT


@runtime_checkable
class BehaviourPolicy(Protocol):
    """What :func:`generate_dataset` uses of a trained model (an :class:`~rl_lightning.RLModule` has all of it)."""

    observation_space: gym.Space
    action_space: gym.Space

    @property
    def device(self) -> torch.device: ...

    @property
    def training(self) -> bool: ...

    def train(self, mode: bool = True) -> Any: ...

    def deterministic_action(self, observation: Observation) -> torch.Tensor:
        """The policy's deterministic actions for observations on the model's device, in the env's scale."""


def generate_dataset(
    model: BehaviourPolicy,
    path: str | os.PathLike[str],
    env_id: str,
    transitions: int,
    noise_std: float = 0.1,
    num_envs: int = 8,
    seed: int | None = 0,
    wrappers: list[WrapperSpec] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    frame_skip: int = 1,
    overwrite: bool = False,
) -> DatasetInfo:
    """Records ``transitions`` transitions of ``model``'s deterministic policy plus Gaussian noise in the real env and
    writes them as a dataset at ``path``.

    The actions are ``clip(deterministic_action(obs) + noise_std * (high - low) / 2 * N(0, 1), low, high)``: the noise
    in units of half the action range (TD3's ``exploration_noise`` scale), the stored action the one the env took.
    The envs are rl_lightning's own (:func:`~rl_lightning.envs.make_vec_env`) stepped by its
    :class:`~rl_lightning.collector.Collector`, so the data has the keys and flags of a training batch. The mean
    return of the episodes that end inside the data is the behaviour policy's
    (:attr:`DatasetInfo.behaviour_mean_return`).

    The directory is written beside ``path`` and renamed into place when complete: a failed run leaves no dataset.

    Args:
        model: the trained model whose ``deterministic_action`` acts (e.g. a :class:`~rl_lightning.TD3` or
            :class:`~rl_lightning.SAC` loaded from a checkpoint).
        path: the dataset directory to write.
        env_id: a registered gymnasium id (the model's env).
        transitions: transitions to store, over all envs; a multiple of ``num_envs``.
        noise_std: the Gaussian noise's standard deviation in units of half the action range; 0 records the
            deterministic policy. Needs a bounded ``Box`` action space when above 0.
        num_envs: envs stepped together.
        seed: resets env ``i`` with ``seed + i`` and seeds the noise; ``None`` leaves both unseeded.
        wrappers: gymnasium wrappers around each env, as :class:`~rl_lightning.RLDataModule` takes them (the ones the
            model was trained with).
        env_kwargs: keyword arguments of ``gym.make``.
        frame_skip: env frames per transition (:class:`~rl_lightning.envs.FrameSkip`).
        overwrite: replace a dataset already at ``path`` (a directory that is not a dataset is never removed).

    Returns:
        The written dataset's :class:`DatasetInfo`.

    Raises:
        ValueError: for a bad argument, a model built for other spaces than the env's, noise on an action space that
            is not a bounded ``Box``, data in which no episode ends, or an existing ``path`` without ``overwrite``.

    Example::

        model = TD3.load_from_checkpoint("runs/td3_pendulum/version_0/checkpoints/last.ckpt")
        info = generate_dataset(model, "data/pendulum_td3", "Pendulum-v1", transitions=50_000, noise_std=0.5)
        info.behaviour_mean_return
    """
    check_int("transitions", transitions, hint="It is the transitions to store, e.g. 100_000.")
    check_int("num_envs", num_envs, hint="It is the envs stepped together, e.g. 8.")
    check_int("frame_skip", frame_skip, hint="Use frame_skip=1 to act on every frame.")
    check_non_negative("noise_std", noise_std, "Use 0 to record the deterministic policy, e.g. 0.1 for some noise.")
    if seed is not None:
        check_int("seed", seed, minimum=0, hint="Gymnasium takes non-negative seeds; use None for unseeded envs.")
    if transitions % num_envs:
        raise ValueError(
            f"transitions={transitions} does not split evenly over num_envs={num_envs} envs: expected a multiple of "
            f"{num_envs}, e.g. transitions={max(1, round(transitions / num_envs)) * num_envs}."
        )
    if not isinstance(model, BehaviourPolicy):
        raise TypeError(
            f"model is a {type(model).__name__}, which has no deterministic_action: pass a trained rl_lightning model "
            "(an RLModule, e.g. TD3.load_from_checkpoint(...))."
        )
    target = Path(path)
    _check_target(target, overwrite)
    _check_json("wrappers", wrappers)
    _check_json("env_kwargs", env_kwargs)

    envs = make_vec_env(env_id, num_envs, wrappers, frame_skip, env_kwargs=env_kwargs)
    try:
        observation_space, action_space = envs.single_observation_space, envs.single_action_space
        for name, ours, theirs in (
            ("observation", observation_space, model.observation_space),
            ("action", action_space, model.action_space),
        ):
            if space_to_dict(ours) != space_to_dict(theirs):
                raise ValueError(
                    f"The model was built for the {name} space {theirs}, but env {env_id!r} (wrappers={wrappers}) "
                    f"has {ours}. Generate the data in the env the model was trained on."
                )
        policy = _NoisyPolicy(model, action_space, noise_std, seed)
        steps = transitions // num_envs
        collector = Collector(envs, policy, min(steps, _CHUNK_STEPS), env_id=env_id)
        collector.reset(seed=seed)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            was_training = model.training
            model.train(False)
            try:
                stored = _collect_into(collector, steps, tmp / TRANSITIONS_DIR)
            finally:
                model.train(was_training)
            ends = stored[keys.NEXT_EPISODE_LENGTH] > 0
            returns = stored[keys.NEXT_EPISODE_RETURN][ends].double()
            if not len(returns):
                raise ValueError(
                    f"No episode of {env_id!r} ended within the {steps} steps of each env, so the behaviour policy's "
                    "mean return is unknown. Raise transitions, or lower num_envs (longer trajectories per env)."
                )
            label = type(model).__name__ + (f" + N(0, {noise_std:g})" if noise_std else " (deterministic)")
            info = DatasetInfo(
                env_id=env_id,
                observation_space=space_to_dict(observation_space),
                action_space=space_to_dict(action_space),
                transitions=transitions,
                episodes=len(returns),
                behaviour_mean_return=float(returns.mean()),
                behaviour_return_std=float(returns.std(unbiased=False)),
                policy=label,
                noise_std=float(noise_std),
                num_envs=num_envs,
                seed=seed,
                frame_skip=frame_skip,
                wrappers=wrappers,
                env_kwargs=env_kwargs,
            )
            (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
            _replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        close_envs(envs)
    return info


def write_dataset(
    path: str | os.PathLike[str], transitions: TensorDict, info: DatasetInfo, overwrite: bool = False
) -> DatasetInfo:
    """Writes ``transitions`` (batch dims ``[N]`` or ``[num_envs, T]``, the keys of :data:`REQUIRED_KEYS` at least)
    as a dataset described by ``info``; ``info.transitions`` is set to their count.

    For transitions that come from elsewhere than :func:`generate_dataset` (another recorder, a converted dataset).
    ``("next", "episode_return")``/``("next", "episode_length")`` are optional; ``info.behaviour_mean_return`` is
    stored as given.

    Raises:
        ValueError: for transitions that lack a required key, whose shapes do not fit ``info``'s spaces, or an
            existing ``path`` without ``overwrite``.
    """
    target = Path(path)
    _check_target(target, overwrite)
    _check_json("wrappers", info.wrappers)
    _check_json("env_kwargs", info.env_kwargs)
    info = DatasetInfo(**{**asdict(info), "transitions": transitions.batch_size.numel()})
    _check_not_empty(transitions, str(target))
    _check_transitions(transitions.reshape(-1), info, str(target))
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        transitions.memmap(str(tmp / TRANSITIONS_DIR))
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def read_dataset_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """The :class:`DatasetInfo` of the dataset at ``path`` (its ``dataset.json``), without opening the transitions.

    Raises:
        FileNotFoundError: when ``path`` is not a dataset directory.
        ValueError: for a ``dataset.json`` of another format or that cannot be read.
    """
    directory = Path(path)
    file = directory / INFO_FILE
    if not file.is_file():
        what = "does not exist" if not directory.exists() else f"has no {INFO_FILE}"
        raise FileNotFoundError(
            f"The offline dataset {str(directory)!r} {what}. Write one with rl_lightning.offline.generate_dataset("
            "model, path, env_id, transitions) (or write_dataset), then pass its directory."
        )
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} cannot be read as JSON ({err}): the dataset is damaged. Generate it again.") from err
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ValueError(
            f"{file} has format {found!r}, expected {FORMAT!r}: it was not written by this version of rl_lightning. "
            "Generate the dataset again with rl_lightning.offline.generate_dataset."
        )
    unknown = sorted(set(raw) - {f.name for f in fields(DatasetInfo)})
    missing = sorted(
        f.name
        for f in fields(DatasetInfo)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in raw
    )
    if unknown or missing:
        raise ValueError(
            f"{file} does not describe a dataset (unknown entries {unknown}, missing entries {missing}). Generate the "
            "dataset again with rl_lightning.offline.generate_dataset."
        )
    return DatasetInfo(**raw)


def load_dataset(path: str | os.PathLike[str]) -> tuple[TensorDict, DatasetInfo]:
    """The transitions of the dataset at ``path``, flat (``batch_size=[N]``, memory-mapped: nothing is read until it
    is indexed), and its :class:`DatasetInfo`.

    Raises:
        FileNotFoundError: when ``path`` is not a dataset directory.
        ValueError: for a dataset without transitions, or whose transitions lack a required key or do not fit the
            spaces its ``dataset.json`` names.
    """
    info = read_dataset_info(path)
    directory = Path(path) / TRANSITIONS_DIR
    if not (directory / "meta.json").is_file():
        raise ValueError(
            f"The offline dataset {str(path)!r} has no memory-mapped transitions in {directory}: it is incomplete. "
            "Generate it again."
        )
    stored = TensorDict.load_memmap(str(directory))
    _check_not_empty(stored, str(path))
    # Plain tensor views of the mapped files: indexing skips MemoryMappedTensor's dispatch (and copies the rows).
    flat = cast(TensorDict, stored.reshape(-1).apply(lambda t: t.as_subclass(torch.Tensor)))
    _check_transitions(flat, info, str(path))
    return flat, info


class _NoisyPolicy:
    """The collector's policy: the model's deterministic action plus Gaussian noise, clipped to the action bounds."""

    def __init__(self, model: BehaviourPolicy, action_space: gym.Space, noise_std: float, seed: int | None) -> None:
        self.model = model
        self.noise_std = noise_std
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.bounds: tuple[torch.Tensor, torch.Tensor] | None = None
        bounded = isinstance(action_space, gym.spaces.Box) and action_space.is_bounded()
        if noise_std > 0 and not bounded:
            raise ValueError(
                f"noise_std={noise_std} adds Gaussian noise to the actions, which needs a bounded Box action space; "
                f"the env has {action_space}. Use noise_std=0 to record the deterministic policy."
            )
        if isinstance(action_space, gym.spaces.Box) and bounded:
            low = torch.as_tensor(action_space.low, dtype=torch.float32)
            high = torch.as_tensor(action_space.high, dtype=torch.float32)
            self.bounds = low, high
            self.scale = (high - low) / 2

    def __call__(self, observation: Observation) -> dict[str, torch.Tensor]:
        action = self.model.deterministic_action(observation.to(self.model.device)).cpu()
        if self.bounds is not None:
            low, high = self.bounds
            if self.noise_std > 0:
                noise = torch.randn(action.shape, generator=self.generator) * (self.noise_std * self.scale)
                action = action.float() + noise
            action = torch.maximum(torch.minimum(action, high), low)  # the action the env takes is the one stored
        return {keys.ACTION: action}


def _collect_into(collector: Collector, steps: int, directory: Path) -> TensorDict:
    """Collects ``steps`` vector steps in chunks into a memory-mapped TensorDict ``[num_envs, steps]`` at
    ``directory``."""
    storage: TensorDict | None = None
    done = 0
    while done < steps:
        collector.steps_per_batch = min(_CHUNK_STEPS, steps - done)
        chunk = collector.collect()
        if storage is None:
            storage = chunk[:, :1].expand(chunk.batch_size[0], steps).memmap_like(str(directory))
        storage[:, done : done + chunk.batch_size[1]] = chunk
        done += chunk.batch_size[1]
    assert storage is not None  # steps >= 1
    return storage


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise ValueError(
            f"{str(target)!r} already exists. Choose another path, or pass overwrite=True to replace the dataset there."
        )
    if not (target / INFO_FILE).is_file() and any(target.iterdir()):
        raise ValueError(
            f"{str(target)!r} exists and is not an offline dataset (no {INFO_FILE}): overwrite=True replaces datasets "
            "only. Choose another path."
        )


def _replace(tmp: Path, target: Path) -> None:
    """Moves the finished dataset ``tmp`` to ``target``, replacing a dataset there."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name}={value!r} cannot be stored in {INFO_FILE} ({err}): expected JSON data (strings, numbers, lists, "
            "mappings), as a config file gives them."
        ) from err


def _check_not_empty(transitions: TensorDict, where: str) -> None:
    if transitions.batch_size.numel() == 0:
        raise ValueError(f"The offline dataset {where!r} holds no transitions. Generate it with transitions >= 1.")


def _check_transitions(flat: TensorDict, info: DatasetInfo, where: str) -> None:
    """Raises unless the flat transitions have the required keys and fit the spaces of ``info``."""
    present = set(flat.keys(include_nested=True, leaves_only=False))
    missing = [key for key in REQUIRED_KEYS if key not in present]
    if missing:
        raise ValueError(
            f"The offline dataset {where!r} lacks the keys {missing} (it has {sorted(map(str, present))}). Every "
            f"transition needs {list(REQUIRED_KEYS)}."
        )
    observation_space = space_from_dict(info.observation_space)
    action_space = space_from_dict(info.action_space)
    for key, space in ((keys.OBSERVATION, observation_space), (keys.NEXT_OBSERVATION, observation_space)):
        if isinstance(space, gym.spaces.Dict):
            continue  # a TensorDict per transition: its leaves were written from the space by the collector
        shape = tuple(flat.get(key).shape[1:])
        if shape != tuple(space.shape or ()):
            raise ValueError(
                f"The offline dataset {where!r} stores {key!r} of shape {list(shape)} per transition, but its "
                f"observation space {observation_space} has shape {list(space.shape or ())}: the data and "
                f"{INFO_FILE} do not belong together. Generate the dataset again."
            )
    action_shape = tuple(flat.get(keys.ACTION).shape[1:])
    if action_shape != tuple(action_space.shape or ()):
        raise ValueError(
            f"The offline dataset {where!r} stores actions of shape {list(action_shape)}, but its action space "
            f"{action_space} has shape {list(action_space.shape or ())}. Generate the dataset again."
        )


_BASE_ONLY_ARGUMENTS = [
    name
    for name in inspect.signature(RLDataModule.__init__).parameters
    if name not in ("self", "frames_per_batch", "total_frames", "seed", "eval_episodes", "eval_envs", "vectorization")
]
"""RLDataModule's arguments that OfflineDataModule reads from the dataset instead (env id, wrappers, ...)."""


def _own_generator(loader: DataLoader) -> DataLoader:
    loader.generator = torch.Generator()
    return loader


class _ResumableLoader(DataLoader):
    """The training loader, resumable mid-epoch without a state of its own: where it goes on follows from the
    module's frame count, which the checkpoint restores. Having ``state_dict``/``load_state_dict`` tells Lightning so
    (it warns about resuming mid-epoch from a loader without them)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Nothing to restore (see the class docstring)."""


class OfflineDataModule(RLDataModule):
    """Stored transitions served as Lightning data: epochs over a dataset, no env stepped for training;
    validation, test and predict run evaluation episodes in the real env as :class:`~rl_lightning.RLDataModule`'s do.

    **What frames mean here.** ``frames`` (the module's counter, the x-axis of every curve) counts *transitions
    trained on*, over all ranks: each training batch adds ``frames_per_batch`` per rank. ``total_frames`` is the
    budget of transitions (``epochs`` times the dataset's size when given as ``epochs``). Evaluation episodes step the
    env but add no frames. ``time/fps`` is transitions trained on per second. No episodes end in the training data,
    so ``rollout/episode_return``, ``rollout/episode_length`` and ``rollout/episodes`` are not logged (the data's
    behaviour return is :attr:`behaviour_mean_return`); ``val/episode_return`` is the learned policy's.

    **Order.** The transitions form one stream: epoch ``e`` is a permutation of all of them drawn from a generator
    seeded with ``(seed, e)``, the epochs follow each other without a gap (a batch may span two), and global batch
    ``b`` is the stream's ``[b * G, (b + 1) * G)`` with ``G = frames_per_batch * world_size``, rank ``r`` taking the
    ``r``-th ``frames_per_batch`` of it. Every transition is trained on once per epoch over all ranks, each rank on
    its own share. The run ends at the first batch boundary at or after the budget, so with ``epochs=E`` up to one
    global batch of epoch ``E + 1`` is trained on too (``frames`` counts it). The position follows from the module's
    frame count alone, so a run resumed from a checkpoint taken mid-epoch trains on exactly the batches the
    uninterrupted run would have; a resume with another number of ranks or ``frames_per_batch`` is refused.

    **The batch.** One training item is a TensorDict ``[frames_per_batch]`` of transitions with the dataset's keys
    (:data:`REQUIRED_KEYS`, plus ``is_init`` and the episode statistics of generated data): what losses that read
    transitions take (torchrl's ``IQLLoss``, ``CQLLoss``, ``TD3BCLoss``). Algorithms that need the collector's time
    order (GAE, n-step replay: rl_lightning's PPO, A2C, SAC, TD3, DQN) are refused when the fit starts.

    Args:
        path: the dataset directory (:func:`generate_dataset`).
        frames_per_batch: transitions per training batch on each rank.
        epochs: passes over the dataset (all ranks together); give this or ``total_frames``.
        total_frames: transitions to train on, all ranks together; give this or ``epochs``.
        seed: seeds each epoch's order (``None``: seed 0, as every rank must draw the same order) and each
            evaluation round's envs as :class:`~rl_lightning.RLDataModule` does (``None``: unseeded).
        eval_episodes: episodes per validation/test round.
        eval_envs: envs stepped together during evaluation (at most ``eval_episodes``).
        vectorization: ``"sync"`` steps the evaluation envs in this process, ``"async"`` in one subprocess each.

    Raises:
        FileNotFoundError: when ``path`` is not a dataset.
        ValueError: for an empty or damaged dataset, a dataset whose spaces differ from its env's today, a batch
            larger than the dataset, or neither or both of ``epochs`` and ``total_frames``.

    Example::

        data = OfflineDataModule("data/pendulum_td3", frames_per_batch=1024, epochs=10)
        model = TorchRLModule(data.observation_space, data.action_space, IQLLoss(actor, qvalue, value), ...)
        make_trainer(val_check_interval=50).fit(model, datamodule=data)
    """

    collects = False

    def __init__(
        self,
        path: str,
        frames_per_batch: int = 256,
        epochs: int | None = None,
        total_frames: int | None = None,
        seed: int | None = 0,
        eval_episodes: int = 10,
        eval_envs: int = 10,
        vectorization: Literal["sync", "async"] = "sync",
    ) -> None:
        check_int("frames_per_batch", frames_per_batch, hint="It is the transitions per training batch, e.g. 256.")
        if (epochs is None) == (total_frames is None):
            raise ValueError(
                f"epochs={epochs} and total_frames={total_frames}: give exactly one, the passes over the dataset "
                "(e.g. epochs=10) or the transitions to train on (e.g. total_frames=1_000_000)."
            )
        if epochs is not None:
            check_int("epochs", epochs, hint="It is the passes over the dataset, e.g. 10.")
        transitions, info = load_dataset(path)  # checks the keys and shapes; nothing is read from the files yet
        if frames_per_batch > info.transitions:
            raise ValueError(
                f"frames_per_batch={frames_per_batch} is larger than the dataset {path!r} ({info.transitions} "
                f"transitions): a batch would hold some transitions twice. Use frames_per_batch <= "
                f"{info.transitions}."
            )
        budget = total_frames if total_frames is not None else (epochs or 0) * info.transitions
        super().__init__(
            env_id=info.env_id,
            num_envs=1,
            frames_per_batch=frames_per_batch,
            total_frames=budget,
            frame_skip=1,  # set below: a transition is one frame here (see frames above)
            vectorization=vectorization,
            wrappers=info.wrappers,
            seed=seed,
            eval_episodes=eval_episodes,
            eval_envs=eval_envs,
            env_kwargs=info.env_kwargs,
        )
        self.frame_skip = info.frame_skip  # the evaluation envs' (FrameSkip changes no space: the probe holds)
        self.steps_per_batch = frames_per_batch  # num_envs (1) x steps: the transitions of a batch
        # This class's arguments only: the env and its options come from the dataset (the base class's are dropped).
        self.save_hyperparameters(ignore=_BASE_ONLY_ARGUMENTS)
        stored = {"observation": space_to_dict(self.observation_space), "action": space_to_dict(self.action_space)}
        if stored != {"observation": info.observation_space, "action": info.action_space}:
            raise ValueError(
                f"The offline dataset {path!r} was recorded in {info.env_id!r} with observation space "
                f"{space_from_dict(info.observation_space)} and action space {space_from_dict(info.action_space)}, but "
                f"the env made from its dataset.json now has {self.observation_space} and {self.action_space} (another "
                "version of the env or its wrappers). Evaluate in the env the data came from, or generate the data "
                "again."
            )
        self.path = path
        self.info = info
        self.epochs = epochs
        self._transitions: TensorDict | None = None
        del transitions  # opened again where it is used (a spawned DDP process maps the files itself)
        self._order_epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)

    # -- the dataset ---------------------------------------------------------------------------------------

    @property
    def transitions(self) -> TensorDict:
        """The stored transitions, flat ``[N]`` and memory-mapped."""
        if self._transitions is None:
            self._transitions, _ = load_dataset(self.path)
        return self._transitions

    @property
    def behaviour_mean_return(self) -> float:
        """The mean return of the episodes in the data (the behaviour policy's), from ``dataset.json``."""
        return self.info.behaviour_mean_return

    @property
    def dataset_size(self) -> int:
        """Transitions in the dataset."""
        return self.info.transitions

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of the dataset's transitions that epoch ``epoch`` trains on, the same on every rank."""
        if epoch != self._order_epoch:
            state = np.random.SeedSequence([self.seed or 0, epoch]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            self._order = torch.randperm(self.dataset_size, generator=generator)
            self._order_epoch = epoch
        return self._order

    def stream_indices(self, start: int, count: int) -> torch.Tensor:
        """The dataset indices of the stream's positions ``[start, start + count)`` (see the class docstring)."""
        parts = []
        size = self.dataset_size
        while count > 0:
            epoch, offset = divmod(start, size)
            take = min(count, size - offset)
            parts.append(self.order(epoch)[offset : offset + take])
            start += take
            count -= take
        return torch.cat(parts)

    def training_batch(self, index: int) -> TensorDict:
        """This rank's share of global training batch ``index``: ``frames_per_batch`` transitions (a copy)."""
        start = index * self.global_frames_per_batch + self.rank * self.frames_per_batch
        return self.transitions[self.stream_indices(start, self.frames_per_batch)]

    # -- what training from stored data changes --------------------------------------------------------------

    @property
    def collector(self) -> Collector:
        raise RuntimeError(
            "OfflineDataModule trains on stored transitions and steps no env for training: it has no collector. "
            "Use RLDataModule to collect with the policy."
        )

    @property
    def training_env_seed(self) -> int | None:
        """``None``: no training envs."""
        return None

    def check_module(self, module: Agent) -> None:
        """Raises unless ``module`` trains on transitions in any order, with the keys the dataset holds, and the
        global batch fits in the dataset."""
        name = type(module).__name__
        if getattr(module, "trains_on_replay", False):
            raise ValueError(
                f"{name} fills a replay buffer from collected batches [num_envs, T] (n-step windows follow each env's "
                "time order), which stored transitions in shuffled batches are not. Train offline with a module whose "
                "loss reads transitions, e.g. TorchRLModule(loss_module=torchrl.objectives.IQLLoss(...))."
            )
        advantage = getattr(module, "advantage", None)
        if advantage is not None:
            raise ValueError(
                f"{name} runs its advantage estimator ({type(advantage).__name__}) over each batch "
                "as [num_envs, T] trajectories in time order, which shuffled stored transitions are not: its "
                "advantages would be computed across unrelated transitions. Train offline without an advantage "
                "module, with a loss that reads transitions (e.g. torchrl's IQLLoss or CQLLoss)."
            )
        present = set(self.transitions.keys(include_nested=True, leaves_only=False))
        missing = [key for key in getattr(module, "batch_keys", ()) if key not in present]
        if missing:
            raise ValueError(
                f"{name} reads the keys {missing}, which the offline dataset {self.path!r} does not hold (it was "
                "recorded without them; on-policy algorithms need the collecting policy's log-probabilities and the "
                "collector's time order). Train offline with a loss that reads transitions, e.g. torchrl's IQLLoss."
            )
        if self.global_frames_per_batch > self.dataset_size:
            raise ValueError(
                f"frames_per_batch={self.frames_per_batch} on each of {self.world_size} ranks is "
                f"{self.global_frames_per_batch} transitions per batch, more than the dataset's {self.dataset_size}. "
                f"Lower frames_per_batch to {self.dataset_size // self.world_size} or less."
            )

    # Every loader draws the base seed of each iterator it starts from a generator of its own instead of torch's global
    # one (the base seed is unused: no worker processes). A validation round or a resumed fit then draws no number
    # that training would have drawn (TorchRLModule's minibatch order), so a resumed run trains as the uninterrupted
    # one, whenever it evaluated.

    def train_dataloader(self) -> DataLoader:
        frames = self.module.frames  # restored by now on a resumed run
        if frames % self.global_frames_per_batch:
            raise ValueError(
                f"The run resumes at frames={frames}, which is not a whole number of global batches of "
                f"{self.global_frames_per_batch} transitions ({self.world_size} ranks x frames_per_batch="
                f"{self.frames_per_batch}): the checkpoint was written with another number of ranks or "
                "frames_per_batch, and the stored batches would no longer line up. Resume with the checkpoint's "
                "ranks and frames_per_batch."
            )
        return _ResumableLoader(_Rollouts(self), batch_size=None, collate_fn=_as_is, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return _own_generator(super().val_dataloader())

    def test_dataloader(self) -> DataLoader:
        return _own_generator(super().test_dataloader())

    def predict_dataloader(self) -> DataLoader:
        return _own_generator(super().predict_dataloader())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "dataset_id": self.info.dataset_id, "path": self.path}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        saved = state_dict.get("dataset_id")
        if saved is not None and saved != self.info.dataset_id:
            raise ValueError(
                f"This checkpoint was trained on the offline dataset {state_dict.get('path')!r} (id {saved}), but this "
                f"run's data is {self.path!r} (id {self.info.dataset_id}), another dataset: resuming would not "
                "continue the same run. Resume with the dataset it was trained on, or start a new run."
            )
        super().load_state_dict(dict(state_dict))
