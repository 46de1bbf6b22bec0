"""The collector as a Lightning DataModule: one training item is one collector batch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader, IterableDataset

from rl_lightning._checks import check_int
from rl_lightning.collector import Collector, Observation, Policy, close_envs, evaluate
from rl_lightning.envpool import evaluation_env_kwargs
from rl_lightning.envs import (
    VECTORIZATIONS,
    Vectorization,
    WrapperSpec,
    check_observation_space,
    check_rgb_array,
    make_env,
    make_vec_env,
)
from rl_lightning.spaces import space_to_dict

LIGHTNING_WARNINGS_BY_DESIGN = (
    r".*`IterableDataset` has `__len__` defined.*",
    r".*does not have many workers.*",
    r".*You are using the `dataloader_iter` step flavor.*",
    r".*Found `dataloader_iter` argument in the `training_step`.*",
    r".*Couldn't infer the batch indices fetched from your dataloader.*",
    r".*callbacks used to create the checkpoint need to be provided.*",
)
"""Lightning's warnings about choices this design makes on purpose (message patterns): the envs run in the main
process (``num_workers=0``, so ``__len__`` is exact), and ``training_step(dataloader_iter)`` is how the rollout of
each update is collected by the current policy instead of one batch ahead. ``trainer.predict`` runs episodes, not
batches of a sampler (no batch indices), and needs no training callbacks of the checkpoint it evaluates.

The ``rl-lightning`` command hides them during its run (:func:`rl_lightning.cli.cli`). Lightning emits them inside
``trainer.fit``, where this library cannot scope a filter, so a fit started from Python shows them (a filter set
at import would change the warnings of the user's whole program); ``warnings.filterwarnings("ignore",
message=pattern)`` for each pattern hides them."""

SEED_OFFSET_PER_RANK = 1_000
"""Rank ``r`` seeds its training envs from ``seed + r * SEED_OFFSET_PER_RANK`` (env ``i``: ``+ i``), so ranks do
not share a seed while they have fewer than 1000 envs each."""
VALIDATION_SEEDS = 1
"""The stream of :func:`evaluation_seed` that the validation and test loops draw from."""
CALLBACK_SEEDS = 2
"""The stream of :func:`evaluation_seed` that ``LogValidationReward`` draws from."""
PREDICTION_SEEDS = 3
"""The stream of :func:`evaluation_seed` that ``trainer.predict`` (``rl-lightning predict``) draws from."""


def evaluation_seed(seed: int, rank: int, evaluation: int, stream: int = VALIDATION_SEEDS) -> int:
    """The seed evaluation number ``evaluation`` on rank ``rank`` resets its envs with (env ``i`` gets it ``+ i``).

    A hash of ``(seed, stream, rank, evaluation)`` (numpy's ``SeedSequence``) below ``2**31``: every evaluation,
    rank and stream (validation loop, ``LogValidationReward``) starts from an unrelated seed, so their envs' seeds
    do not overlap in practice (two ranges of ``n`` seeds meet with probability about ``2n / 2**31``), nor meet the
    training envs' ``seed + 1000 * rank + i``. The same arguments always give the same seed.

    Example:
        >>> evaluation_seed(0, rank=0, evaluation=1) == evaluation_seed(0, rank=0, evaluation=1)
        True
        >>> evaluation_seed(0, rank=0, evaluation=1) != evaluation_seed(0, rank=0, evaluation=2)
        True
    """
    state = np.random.SeedSequence([seed, stream, rank, evaluation]).generate_state(1, dtype=np.uint32)
    return int(state[0] >> 1)  # below 2**31: ``+ i`` stays a valid uint32 seed for envs that need one


@runtime_checkable
class Agent(Protocol):
    """What the data uses of the module the trainer fits: its policy and its frame count
    (:class:`~rl_lightning.RLModule` has both)."""

    frames: int
    """Env frames collected over all ranks (a resumed run's include those before its checkpoint)."""

    def act(self, observation: Observation, deterministic: bool = False) -> dict[str, torch.Tensor]:
        """Maps observations ``[num_envs, ...]`` (a TensorDict for a ``Dict`` space) to ``{"action": ..., ...}``."""


def _as_is(item: Any) -> Any:
    """The DataLoader's ``collate_fn``: items are whole batches already (the default would unpack TensorDicts)."""
    return item


class _Rollouts(IterableDataset):
    """Yields the data's training batches (:meth:`RLDataModule.training_batch`) until the global frame budget is
    spent, resuming from the module's count."""

    def __init__(self, data: RLDataModule) -> None:
        self.data = data

    def __len__(self) -> int:
        # The batches this fit will yield (a resumed run: those left), what progress bars show as the total.
        return self.data.num_batches - self.data.done_batches

    def __iter__(self) -> Iterator[TensorDictBase]:
        data = self.data
        for index in range(data.done_batches, data.num_batches):
            yield data.training_batch(index)


class _Evaluation(IterableDataset):
    """One item: the returns of ``eval_episodes`` episodes of the module's deterministic policy."""

    def __init__(self, data: RLDataModule, stream: int = VALIDATION_SEEDS) -> None:
        self.data = data
        self.stream = stream

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[TensorDict]:
        data = self.data
        data.eval_rounds += 1
        seed = None if data.seed is None else evaluation_seed(data.seed, data.rank, data.eval_rounds, self.stream)
        frames = data.predict_frames if self.stream == PREDICTION_SEEDS else None
        if frames is None:
            yield evaluate(data.eval_envs, data.deterministic_policy, data.eval_episodes, seed=seed, env_id=data.env_id)
            return
        envs = data.make_eval_envs(data.eval_envs_count, render_mode="rgb_array")
        try:
            result = evaluate(envs, data.deterministic_policy, data.eval_episodes, seed, frames, env_id=data.env_id)
        finally:
            close_envs(envs)
        yield result


class RLDataModule(pl.LightningDataModule):
    """Gymnasium vector envs stepped by the module's current policy, served as Lightning data.

    The training "dataset" yields one collector batch (a TensorDict ``[num_envs, T]``) per item until
    ``total_frames`` (all ranks together) are spent; validation and test run deterministic evaluation
    episodes. Observation and action spaces are known at construction, so the CLI links them into the model.

    Args:
        env_id: a registered gymnasium id; ``"my_package.module:MyEnv-v0"`` imports the module first.
        num_envs: envs per rank, stepped together by one policy call.
        frames_per_batch: env frames per collector batch on each rank (Lightning's per-device convention).
        total_frames: frame budget of the whole run, all ranks together; the run stops when it is spent.
        frame_skip: env frames per agent step (each action repeated, rewards summed, by
            :class:`~rl_lightning.envs.FrameSkip` below the wrappers); frames count env frames, i.e. agent steps
            times ``frame_skip``. A frame skip done by a wrapper (``gymnasium.wrappers.AtariPreprocessing``'s
            ``frame_skip=4``) is not seen: frames then count agent steps, as stable-baselines3's and CleanRL's
            Atari budgets do (10M agent steps = 40M emulator frames).
        vectorization: ``"sync"`` steps the envs in this process, ``"async"`` in one subprocess per env,
            ``"envpool"`` in EnvPool's thread pool (the ``envpool`` extra; ids as EnvPool names them, e.g.
            ``"Pong-v5"``, with its preprocessing set through ``env_kwargs``; it takes no ``wrappers``,
            ``train_wrappers``, ``frame_skip`` or ``pixels``; its training-only options, such as ``episodic_life``
            and ``reward_clip``, are turned off for evaluation by
            :func:`~rl_lightning.envpool.evaluation_env_kwargs`).
        wrappers: gymnasium wrappers applied to each env, training and evaluation, innermost first: import paths
            or ``{"class_path": ..., "init_args": {...}}``.
        train_wrappers: gymnasium wrappers applied after ``wrappers`` to the training envs only, never to the
            evaluation envs: e.g. :class:`~rl_lightning.envs.EpisodicLife` and ``gymnasium.wrappers.ClipReward``, so
            that they shape training while ``val/episode_return`` reports the games' own returns. The training
            curves ``rollout/episode_return`` and ``rollout/episode_length`` stay those of whole episodes as
            ``wrappers`` shape them (read from a ``RecordEpisodeStatistics`` below the training wrappers, see
            :func:`~rl_lightning.envs.make_env`); they must not change the observation or action space.
        env_kwargs: keyword arguments of ``gym.make`` (or of EnvPool's ``make``), e.g. ``{"frameskip": 1,
            "repeat_action_probability": 0.0}`` for ``ALE/Pong-v5`` under ``AtariPreprocessing``.
        seed: seeds the training envs (``seed + rank * 1000 + env index``) and each validation/test round's envs
            (:func:`evaluation_seed` of the seed, the rank and the round, ``+ env index``); ``None`` leaves them
            unseeded.
        eval_episodes: episodes per validation/test round.
        eval_envs: envs stepped together during evaluation (at most ``eval_episodes``).
        pixels: make the training envs with ``render_mode="rgb_array"`` and put each step's rendered frames in
            the batch under ``"pixels"`` (``[num_envs, T, H, W, 3]`` uint8, beside the observation). Rendering
            costs time and memory (CartPole: 400x600x3 bytes per frame).
        stats_window: the logged ``rollout/episode_return`` and ``rollout/episode_length`` are the means over the
            last ``stats_window`` training episodes completed on all ranks (stable-baselines3's ``ep_rew_mean``).

    Example:
        >>> data = RLDataModule("CartPole-v1", num_envs=4, frames_per_batch=64, total_frames=640)
        >>> data.observation_space.shape, data.action_space.n
        ((4,), np.int64(2))
    """

    collects: bool = True
    """Whether the training batches are collected by stepping envs (episodes end in them, counted and logged as
    ``rollout/*``); stored data (:class:`~rl_lightning.offline.OfflineDataModule`) is not."""

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 8,
        frames_per_batch: int = 1024,
        total_frames: int = 100_000,
        frame_skip: int = 1,
        vectorization: Vectorization = "sync",
        wrappers: list[WrapperSpec] | None = None,
        seed: int | None = 0,
        eval_episodes: int = 10,
        eval_envs: int = 10,
        pixels: bool = False,
        stats_window: int = 100,
        train_wrappers: list[WrapperSpec] | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_int("num_envs", num_envs, hint="It is the envs stepped together on each rank, e.g. 8.")
        check_int("frame_skip", frame_skip, hint="Use frame_skip=1 to act on every frame.")
        check_int("frames_per_batch", frames_per_batch, hint="It is the env frames per collector batch, e.g. 1024.")
        check_int("total_frames", total_frames, hint="It is the frame budget of the whole run, e.g. 100_000.")
        check_int("eval_episodes", eval_episodes, hint="It is the episodes per validation round, e.g. 10.")
        check_int("eval_envs", eval_envs, hint="It is the envs stepped together during evaluation, e.g. 10.")
        check_int("stats_window", stats_window, hint="It is the episodes the training curves average, e.g. 100.")
        if seed is not None:
            check_int("seed", seed, minimum=0, hint="Gymnasium takes non-negative seeds; use null for unseeded envs.")
        if frames_per_batch % (num_envs * frame_skip):
            step = num_envs * frame_skip
            raise ValueError(
                f"frames_per_batch={frames_per_batch} does not split evenly over num_envs={num_envs} envs "
                f"with frame_skip={frame_skip}: expected a multiple of {step}, "
                f"e.g. frames_per_batch={max(1, round(frames_per_batch / step)) * step}."
            )
        if total_frames < frames_per_batch:
            raise ValueError(
                f"total_frames={total_frames} is below frames_per_batch={frames_per_batch}: the budget would not "
                "fill one batch. Raise total_frames or lower frames_per_batch."
            )
        if vectorization not in VECTORIZATIONS:
            raise ValueError(
                f"vectorization={vectorization!r} is invalid: expected one of {', '.join(map(repr, VECTORIZATIONS))}."
            )
        if env_kwargs is not None and not isinstance(env_kwargs, dict):
            raise ValueError(
                f"env_kwargs={env_kwargs!r} is invalid: expected a mapping of gym.make's keyword arguments, e.g. "
                "{'frameskip': 1}, or null."
            )
        if vectorization == "envpool" and pixels:
            raise ValueError(
                "pixels=True renders frames with gymnasium's render_mode='rgb_array', which vectorization='envpool' "
                "does not provide. Use vectorization 'sync' or 'async' to store rendered frames."
            )
        self.save_hyperparameters()
        self.env_id = env_id
        self.num_envs = num_envs
        self.frames_per_batch = frames_per_batch
        self.total_frames = total_frames
        self.frame_skip = frame_skip
        self.vectorization: Vectorization = vectorization
        self.wrappers = wrappers
        self.train_wrappers = train_wrappers
        self.env_kwargs = env_kwargs
        self.seed = seed
        self.eval_episodes = eval_episodes
        self.eval_envs_count = min(eval_envs, eval_episodes)
        self.steps_per_batch = frames_per_batch // (num_envs * frame_skip)
        self.eval_rounds = 0
        self.pixels = pixels
        self.stats_window = stats_window
        self.pixels_shape: tuple[int, ...] | None = None
        """``[H, W, 3]`` of the rendered frames with ``pixels=True``."""
        self.observation_space: gym.Space
        self.action_space: gym.Space
        self.observation_space, self.action_space = self._probe_spaces()
        check_observation_space(self.observation_space, env_id)
        if pixels:
            self.pixels_shape = check_rgb_array(
                env_id, wrappers, frame_skip, "RLDataModule(pixels=True)", env_kwargs=env_kwargs
            )
        self._collector: Collector | None = None
        self._eval_envs: gym.vector.VectorEnv | None = None
        self.predict_frames: list[np.ndarray] | None = None
        """Set to a list before ``trainer.predict`` to render its episodes: the frames of the first evaluation env's
        episodes are appended to it (``EpisodeWriter(video=True)`` does this and writes them to an mp4)."""

    def _probe_spaces(self) -> tuple[gym.Space, gym.Space]:
        """The observation and action spaces of one env; with ``train_wrappers``, checked to be those of the
        evaluation envs too."""
        if self.vectorization == "envpool":
            probe = make_vec_env(
                self.env_id,
                1,
                self.wrappers,
                self.frame_skip,
                "envpool",
                env_kwargs=self.env_kwargs,
                train_wrappers=self.train_wrappers,
            )
            spaces = probe.single_observation_space, probe.single_action_space
            probe.close()
            return spaces
        env = make_env(self.env_id, self.wrappers, self.frame_skip, env_kwargs=self.env_kwargs)
        spaces = env.observation_space, env.action_space
        env.close()
        if self.train_wrappers:
            env = make_env(
                self.env_id,
                self.wrappers,
                self.frame_skip,
                env_kwargs=self.env_kwargs,
                train_wrappers=self.train_wrappers,
            )
            training = env.observation_space, env.action_space
            env.close()
            if training != spaces:
                raise ValueError(
                    f"train_wrappers={self.train_wrappers} change the spaces of env {self.env_id!r} from "
                    f"(observation, action) {spaces} to {training}; evaluation, which runs without them, would not "
                    "fit the policy. Move the wrappers that change a space to wrappers."
                )
        return spaces

    # -- spaces, linked into the model by the CLI -------------------------------------------------------

    @property
    def spaces(self) -> dict[str, dict[str, Any]]:
        """The observation and action spaces as plain data (what models store in their hyperparameters)."""
        return {
            "observation": space_to_dict(self.observation_space),
            "action": space_to_dict(self.action_space),
        }

    def check_module(self, module: Agent) -> None:
        """Raises if ``module`` cannot train on this data; called from ``RLModule.check_data`` before a run starts.
        Collected data fits any module."""

    # -- counting -----------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def global_frames_per_batch(self) -> int:
        """Frames one training batch adds over all ranks."""
        return self.frames_per_batch * self.world_size

    @property
    def num_batches(self) -> int:
        """Training batches per rank that spend ``total_frames`` (rounded up: the budget is always met)."""
        return math.ceil(self.total_frames / self.global_frames_per_batch)

    @property
    def done_batches(self) -> int:
        """Training batches per rank collected so far, by the module's frame count: when a fit starts, none in a
        fresh run and those of its checkpoint in a resumed one."""
        return self.module.frames // self.global_frames_per_batch

    @property
    def rank_seed(self) -> int:
        return (self.seed or 0) + self.rank * SEED_OFFSET_PER_RANK

    @property
    def training_env_seed(self) -> int | None:
        """The seed this rank's training envs are reset with when a fit starts (env ``i`` gets ``seed + i``).

        A fresh run: ``seed + rank * 1000``. A resumed run (envs cannot be restored: they restart from reset) mixes
        the seed, the rank and the frames already collected, so it does not replay the episodes the run began with,
        and every resume of one checkpoint collects the same. ``None`` with ``seed=None``.
        """
        if self.seed is None:
            return None
        frames = self.module.frames
        if frames == 0:
            return self.rank_seed
        return int(np.random.SeedSequence([self.seed, self.rank, frames]).generate_state(1)[0])

    # -- the policy comes from the module the trainer is fitting --------------------------------------

    @property
    def module(self) -> Agent:
        """The module the trainer is fitting, whose policy collects (an :class:`~rl_lightning.RLModule`)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not isinstance(module, Agent):
            raise RuntimeError(
                f"RLDataModule collects with the policy of an RLModule, but the trainer holds {type(module)}. "
                "Pass an RLModule (e.g. rl_lightning.PPO) to trainer.fit together with this DataModule."
            )
        return module

    @property
    def policy(self) -> Policy:
        return self.module.act

    def deterministic_policy(self, obs: Observation) -> dict[str, torch.Tensor]:
        return self.module.act(obs, deterministic=True)

    @property
    def collector(self) -> Collector:
        if self._collector is None:
            render_mode = "rgb_array" if self.pixels else None
            envs = make_vec_env(
                self.env_id,
                self.num_envs,
                self.wrappers,
                self.frame_skip,
                self.vectorization,
                render_mode=render_mode,
                env_kwargs=self.env_kwargs,
                train_wrappers=self.train_wrappers,
            )
            # Page-locked batches when the module trains on a GPU: the batch's copy there (RLModule.training_step)
            # and each step's observations (the policy) are then asynchronous copies.
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
            self._collector = Collector(
                envs,
                self.policy,
                self.steps_per_batch,
                self.pixels,
                self.env_id,
                pin,
                # Whole episodes as `wrappers` shape them, read below the training-only options: a
                # RecordEpisodeStatistics under the train_wrappers, or EnvPool's game statistics (episodic_life).
                episodes_from_info=bool(self.train_wrappers) or self.vectorization == "envpool",
            )
            self._collector.reset(seed=self.training_env_seed)
        return self._collector

    @property
    def eval_envs(self) -> gym.vector.VectorEnv:
        if self._eval_envs is None:
            self._eval_envs = self.make_eval_envs(self.eval_envs_count)
        return self._eval_envs

    def make_eval_envs(
        self, num_envs: int, render_mode: str | None = None, vectorization: Vectorization | None = None
    ) -> gym.vector.VectorEnv:
        """New evaluation envs: the data's env id, ``env_kwargs``, ``frame_skip`` and ``wrappers``, without the
        ``train_wrappers`` (the caller closes them).

        Args:
            num_envs: envs stepped together.
            render_mode: e.g. ``"rgb_array"`` to record videos.
            vectorization: ``None`` for the data's own.
        """
        vectorization = vectorization or self.vectorization
        # EnvPool's training-only options (episodic_life, reward_clip) are env options, not train_wrappers.
        env_kwargs = evaluation_env_kwargs(self.env_kwargs) if vectorization == "envpool" else self.env_kwargs
        return make_vec_env(
            self.env_id,
            num_envs,
            self.wrappers,
            self.frame_skip,
            vectorization,
            render_mode=render_mode,
            env_kwargs=env_kwargs,
        )

    # -- Lightning hooks -----------------------------------------------------------------------------

    def training_batch(self, index: int) -> TensorDictBase:
        """Global training batch ``index`` of this rank: here, the next batch the collector collects with the
        module's current policy. Subclasses serve other data (stored transitions, a torchrl collector's batches)."""
        return self.collector.collect()

    def train_dataloader(self) -> DataLoader:
        # Lightning warns about this loader's design in trainer.fit: see LIGHTNING_WARNINGS_BY_DESIGN.
        return DataLoader(_Rollouts(self), batch_size=None, collate_fn=_as_is)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Evaluation(self), batch_size=None, collate_fn=_as_is)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Evaluation(self), batch_size=None, collate_fn=_as_is)

    def predict_dataloader(self) -> DataLoader:
        """One item: ``eval_episodes`` deterministic episodes (their returns and lengths), on the evaluation envs or,
        with :attr:`predict_frames` set, on new ones that render."""
        return DataLoader(_Evaluation(self, PREDICTION_SEEDS), batch_size=None, collate_fn=_as_is)

    def teardown(self, stage: str) -> None:
        self.close()

    def on_exception(self, exception: BaseException) -> None:
        # Lightning calls no `teardown` after an exception: close here, or async envs' subprocesses outlive the fit.
        self.close(force=True)

    def close(self, force: bool = False) -> None:
        """Closes the training and evaluation envs; ``force`` ends async envs' subprocesses without asking them
        (see :func:`~rl_lightning.collector.close_envs`)."""
        if self._collector is not None:
            close_envs(self._collector.envs, force)
            self._collector = None
        if self._eval_envs is not None:
            close_envs(self._eval_envs, force)
            self._eval_envs = None

    def state_dict(self) -> dict[str, Any]:
        return {"eval_rounds": self.eval_rounds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.eval_rounds = int(state_dict.get("eval_rounds", 0))
