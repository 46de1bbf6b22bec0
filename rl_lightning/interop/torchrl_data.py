"""``TorchRLDataModule``: a torchrl collector (or a torchrl env) as the data of an :class:`~rl_lightning.RLModule`.

torchrl's collectors already return rl_lightning's batches, almost: the keys are torchrl's (``observation``,
``action``, ``action_log_prob``, ``("next", "reward")``, ``("next", "terminated")``, ...), time is the last batch
dim, and ``("next", "observation")`` is the true next observation (the final one when an episode ended: torchrl
resets into the next step's root, not into ``"next"``). This module adds what the data contract has and torchrl's
batches lack (``is_init``, and the return and length of each episode where it ends), lays each batch out as
``[num_envs, T]``, and keeps :class:`~rl_lightning.RLDataModule`'s frame budget, per-rank seeds, evaluation
episodes and checkpoint state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase

from rl_lightning import keys
from rl_lightning._checks import check_int
from rl_lightning.data import RLDataModule
from rl_lightning.envs import WrapperSpec
from rl_lightning.interop import torchrl_missing

try:
    from torchrl.collectors import BaseCollector, Collector, MultiAsyncCollector
    from torchrl.envs import EnvBase
except ImportError as err:  # the core environment pins a tensordict that torchrl 0.14 does not accept
    raise torchrl_missing(__name__, err) from err

CollectorFactory = Callable[[TensorDictModuleBase], BaseCollector]
"""Builds this rank's collector from the module's policy, e.g. ``lambda policy: MultiSyncCollector([make_env] * 2,
policy, frames_per_batch=256, total_frames=-1)``."""
EnvFactory = Callable[[], EnvBase]
"""Builds this rank's torchrl env, e.g. ``lambda: GymEnv("CartPole-v1", categorical_action_encoding=True)``."""

_TRAJ_IDS = ("collector", "traj_ids")


class _ModulePolicy(TensorDictModuleBase):
    """The module's :meth:`~rl_lightning.RLModule.act` as a torchrl policy: ``observation`` in, ``act``'s entries
    (``action``, ``action_log_prob``, ...) out, for envs of any batch size. It holds the module without registering
    it (its parameters stay the module's own), so it runs in this process only."""

    def __init__(self, act: Callable[[torch.Tensor], dict[str, torch.Tensor]], observation_shape: tuple[int, ...]):
        super().__init__()
        self.in_keys = [keys.OBSERVATION]
        self.out_keys = [keys.ACTION]
        self._act = act
        self._observation_shape = observation_shape

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get(keys.OBSERVATION)
        out = self._act(observation.reshape(-1, *self._observation_shape))
        for key, value in out.items():
            tensordict.set(key, value.reshape((*tensordict.batch_size, *value.shape[1:])))
        return tensordict


class _EpisodeTracker:
    """Running returns and lengths of each env across batches: writes ``("next", "episode_return")`` and
    ``("next", "episode_length")`` where an episode ends (0 elsewhere) and ``is_init`` where one starts.

    A step starts an episode when its ``("collector", "traj_ids")`` differs from the step before it in the same env
    (torchrl gives each trajectory its id, also across batches and after a reset), or, without ids, after a done;
    the first step after the collector's reset starts one in every env. The returns are sums of the
    ``("next", "reward")`` the collector returns, as ``RLDataModule``'s are of the rewards its envs return. An
    episode cut by a reset before it ended (``reset_at_each_iter=True``) is not reported.
    """

    def __init__(self, num_envs: int) -> None:
        self.running_return = np.zeros(num_envs, dtype=np.float64)
        self.running_length = np.zeros(num_envs, dtype=np.int64)
        self.last_traj: np.ndarray | None = None
        self.last_done = np.ones(num_envs, dtype=bool)

    def __call__(self, batch: TensorDictBase) -> None:
        num_envs, steps = batch.batch_size
        reward = batch.get(keys.NEXT_REWARD).reshape(num_envs, steps, -1).sum(-1).double().numpy()
        done = batch.get(keys.NEXT_DONE).reshape(num_envs, steps, -1).any(-1).numpy()
        traj = batch.get(_TRAJ_IDS, None)
        traj_ids = None if traj is None else traj.reshape(num_envs, steps).numpy()
        is_init = np.zeros((num_envs, steps, 1), dtype=bool)
        episode_return = torch.zeros(num_envs, steps, 1, dtype=torch.float32)
        episode_length = torch.zeros(num_envs, steps, 1, dtype=torch.int64)
        return_view, length_view = episode_return.numpy(), episode_length.numpy()
        for t in range(steps):
            new = self.last_done
            if traj_ids is not None:
                if self.last_traj is not None:
                    new = traj_ids[:, t] != self.last_traj
                self.last_traj = traj_ids[:, t]
            self.running_return[new] = 0.0
            self.running_length[new] = 0
            is_init[:, t, 0] = new
            self.running_return += reward[:, t]
            self.running_length += 1
            ended = done[:, t]
            return_view[ended, t, 0] = self.running_return[ended]
            length_view[ended, t, 0] = self.running_length[ended]
            self.last_done = ended
        batch.set(keys.IS_INIT, torch.from_numpy(is_init))
        batch.set(keys.NEXT_EPISODE_RETURN, episode_return)
        batch.set(keys.NEXT_EPISODE_LENGTH, episode_length)


class TorchRLDataModule(RLDataModule):
    """A torchrl collector, or a torchrl env stepped by the module's policy, served as rl_lightning's data.

    Give exactly one of ``collector`` and ``env``:

    - ``collector``: a torchrl ``Collector`` (formerly ``SyncDataCollector``) or ``MultiSyncCollector`` (formerly
      ``MultiSyncDataCollector``), built with ``total_frames=-1`` (the budget is ``total_frames`` here), or a function
      that builds one from the module's policy (:data:`CollectorFactory`), called on each rank when its first batch is
      needed. torchrl's ``MultiAsyncCollector`` is refused: it collects the next batch while the module trains on
      this one, with the weights of before the update.
    - ``env``: a torchrl env (``GymEnv``, ``TransformedEnv``, a batched ``ParallelEnv``) or a function that builds one
      (:data:`EnvFactory`); a torchrl ``Collector`` in this process then steps it with the module's policy.

    The policy the collector gets is the module's ``policy`` where it is a ``TensorDictModule`` (a
    :class:`~rl_lightning.interop.torchrl_module.TorchRLModule`'s, which multi-process collectors can copy to their
    workers), else the module's :meth:`~rl_lightning.RLModule.act` wrapped as one (any rl_lightning algorithm, in
    this process only). A collector whose workers run a copy of the policy that the optimizer does not write needs
    :class:`~rl_lightning.callbacks.UpdateWeights` among the callbacks, which calls :meth:`update_policy_weights_`.

    What is :class:`~rl_lightning.RLDataModule`'s stays so: ``total_frames`` is the budget of all ranks together and
    ``frames_per_batch`` each rank's (each batch must hold exactly that many frames, or the run stops naming both);
    each rank seeds its collector's envs with ``collector.set_seed(seed + rank * 1000)`` and resets them (a resumed
    run with :attr:`~rl_lightning.RLDataModule.training_env_seed`'s mix of seed, rank and frames); validation, test
    and predict run ``eval_episodes`` deterministic episodes in gymnasium envs of ``env_id`` (with ``wrappers`` and
    ``env_kwargs``, not the torchrl env's transforms), whose spaces must be those of the torchrl env's batches.

    Batches are the collector's TensorDicts laid out as ``[num_envs, T]`` (a single env's ``[T]`` becomes ``[1, T]``,
    a ``MultiSyncCollector``'s stacked ``[workers, (envs,) T]`` becomes ``[workers * envs, T]``), with ``is_init``,
    ``("next", "episode_return")`` and ``("next", "episode_length")`` added where episodes start and end, from the
    rewards and trajectory ids of the batches (``rollout/episode_return`` is then counted as with ``RLDataModule``);
    torchrl's other entries (``logits``, ``("collector", "traj_ids")``, a ``RewardSum``'s ``episode_reward``) stay.
    Discrete actions must be indices, as gymnasium takes them: ``GymEnv(..., categorical_action_encoding=True)``.

    A checkpoint restores what the module holds (weights, counters, episode statistics, this process's RNG states)
    and the evaluation rounds. It cannot hold the collector: a resumed run builds the collector again (a collector
    passed as an object goes on from where it is), resets its envs with a fresh seed, and starts new episodes;
    the running episodes of the interrupted run are not reported, and the RNG states of multi-process collectors'
    workers are not restored.

    Args:
        collector: a torchrl collector, or a function of the policy that builds one (see above).
        env: a torchrl env, or a function that builds one (see above).
        env_id: the gymnasium id of the same environment, for the spaces and the evaluation episodes.
        num_envs: envs one batch holds: the env's batch size (1 for a ``GymEnv``), times a multi-process collector's
            workers (2 workers of one env each: 2).
        frames_per_batch: env frames per batch on each rank; the collector's ``frames_per_batch`` (made with
            ``env``: its own).
        total_frames: frame budget of the whole run, all ranks together.
        seed: seeds the collector's envs (``seed + rank * 1000``) and the evaluation envs; ``None``: unseeded (the
            collector's envs are still reset when its first batch is asked for, so that every episode is counted
            from its start).
        eval_episodes: episodes per validation/test round.
        eval_envs: envs stepped together during evaluation.
        stats_window: the episodes ``rollout/episode_return`` and ``rollout/episode_length`` average.
        wrappers: gymnasium wrappers of the evaluation envs.
        env_kwargs: keyword arguments of ``gym.make`` for the evaluation envs.

    Example:
        >>> from torchrl.envs import GymEnv
        >>> data = TorchRLDataModule(
        ...     env=lambda: GymEnv("CartPole-v1", categorical_action_encoding=True),
        ...     env_id="CartPole-v1", frames_per_batch=64, total_frames=640,
        ... )
        >>> data.num_batches, data.steps_per_batch
        (10, 64)
    """

    def __init__(
        self,
        collector: BaseCollector | CollectorFactory | None = None,
        env: EnvBase | EnvFactory | None = None,
        env_id: str = "CartPole-v1",
        num_envs: int = 1,
        frames_per_batch: int = 1024,
        total_frames: int = 100_000,
        seed: int | None = 0,
        eval_episodes: int = 10,
        eval_envs: int = 10,
        stats_window: int = 100,
        wrappers: list[WrapperSpec] | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if collector is not None and env is not None:
            raise ValueError(
                "TorchRLDataModule takes a torchrl collector or a torchrl env, but both were given. Pass "
                "collector=Collector(...) (or a function of the policy that builds one), or env=GymEnv(...) (or a "
                "function that builds one) to be stepped by the module's policy."
            )
        if collector is not None:
            _check_collector_argument(collector)
        if env is not None and not (isinstance(env, EnvBase) or callable(env)):
            raise TypeError(
                f"env is a {type(env).__name__}, not a torchrl env. Pass a torchrl EnvBase (e.g. "
                "torchrl.envs.GymEnv('CartPole-v1', categorical_action_encoding=True)) or a function that builds one."
            )
        check_int("num_envs", num_envs, hint="It is the envs one batch holds (a single GymEnv: 1).")
        given_collector, given_env = collector, env
        # Lightning's save_hyperparameters (in RLDataModule.__init__) reads this frame's arguments and deep-copies
        # them: a collector with worker processes must not be among them.
        collector = env = None
        super().__init__(
            env_id=env_id,
            num_envs=num_envs,
            frames_per_batch=frames_per_batch,
            total_frames=total_frames,
            seed=seed,
            eval_episodes=eval_episodes,
            eval_envs=eval_envs,
            stats_window=stats_window,
            wrappers=wrappers,
            env_kwargs=env_kwargs,
        )
        self.save_hyperparameters(ignore=["collector", "env"])  # objects, not hyperparameters
        collector, env = given_collector, given_env
        self._given_collector = collector if isinstance(collector, BaseCollector) else None
        self._collector_factory = None if isinstance(collector, BaseCollector) else collector
        self._env = env
        if isinstance(collector, BaseCollector):
            self._check_collector(collector)
        if isinstance(env, EnvBase):
            _check_env(env, num_envs, self.observation_space, self.action_space, env_id)
        self._torchrl_collector: BaseCollector | None = None
        self._tracker: _EpisodeTracker | None = None
        self._batches_checked = False
        self._given_collector_closed = False

    # -- the collector ----------------------------------------------------------------------------------

    @property
    def policy_module(self) -> TensorDictModuleBase:
        """What the collector steps the envs with: the module's ``policy`` ``TensorDictModule`` where it has one (a
        ``TorchRLModule``), else its ``act`` wrapped as one."""
        module = self.module
        policy = getattr(module, "policy", None)
        if isinstance(policy, TensorDictModuleBase):
            return policy
        return _ModulePolicy(module.act, tuple(self.observation_space.shape or ()))

    @property
    def torchrl_collector(self) -> BaseCollector:
        """This rank's torchrl collector, built (or taken) and seeded when the first batch is needed."""
        if self._torchrl_collector is None:
            collector = self._build_collector()
            seed = self.training_env_seed
            if seed is not None:
                collector.set_seed(seed)
            collector.reset()  # every env starts an episode: the episode statistics begin here
            self._torchrl_collector = collector
            # Workers that build their own policy (policy_factory) start from the module's weights, not their own.
            self.update_policy_weights_()
            self._tracker = _EpisodeTracker(self.num_envs)
        return self._torchrl_collector

    def _build_collector(self) -> BaseCollector:
        if self._given_collector is not None:
            if self._given_collector_closed:
                raise RuntimeError(
                    "The collector given to this TorchRLDataModule was shut down when the previous fit ended. Build a "
                    "new one for this fit, or give a function that builds it (collector=lambda policy: ...)."
                )
            return self._given_collector
        policy = self.policy_module
        if self._collector_factory is not None:
            collector = self._collector_factory(policy)
            try:
                _check_collector_argument(collector, built=True)
                self._check_collector(collector)
                if isinstance(policy, _ModulePolicy) and not isinstance(collector, Collector):
                    raise ValueError(
                        f"The collector function built a {type(collector).__name__} around "
                        f"{type(self.module).__name__}'s act, which only runs in the trainer's process: its workers "
                        "would step a frozen copy of the module that no weight update reaches. Build a torchrl "
                        "Collector (in-process), or train a TorchRLModule, whose policy is a TensorDictModule that "
                        "UpdateWeights keeps current in the workers."
                    )
            except (TypeError, ValueError):
                if isinstance(collector, BaseCollector):
                    collector.shutdown()  # its workers would otherwise outlive the failed fit
                raise
            return collector
        env = self._env if isinstance(self._env, EnvBase) else self._env()  # type: ignore[misc]  # a factory
        if not isinstance(env, EnvBase):
            raise TypeError(
                f"env() returned a {type(env).__name__}, not a torchrl env. Return a torchrl EnvBase, e.g. "
                "GymEnv('CartPole-v1', categorical_action_encoding=True)."
            )
        _check_env(env, self.num_envs, self.observation_space, self.action_space, self.env_id)
        # The env is stepped as given (torchrl 0.14 warns that 0.15 will add the transforms a policy reads, e.g.
        # InitTracker, by itself; a recurrent policy's user adds them to the env).
        # A TensorDictModule policy runs where the module is (a GPU), the env and the batches stay on the CPU (the loop
        # moves each batch to the module's device, as RLDataModule's). A wrapped act moves its data itself.
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        return Collector(
            env,
            policy,
            frames_per_batch=self.frames_per_batch,
            total_frames=-1,
            auto_register_policy_transforms=False,
            policy_device=None if isinstance(policy, _ModulePolicy) else device,
            env_device="cpu",
            storing_device="cpu",
        )

    def _check_collector(self, collector: BaseCollector) -> None:
        """The collector's frames per batch and budget must fit this data's (checked before any frame is stepped)."""
        per_batch = getattr(collector, "requested_frames_per_batch", None)
        if per_batch is not None and per_batch != self.frames_per_batch:
            raise ValueError(
                f"The collector collects frames_per_batch={per_batch}, but this data's frames_per_batch is "
                f"{self.frames_per_batch}. Build the collector with frames_per_batch={self.frames_per_batch}, or set "
                f"the data's frames_per_batch={per_batch}."
            )
        budget = getattr(collector, "total_frames", None)
        if isinstance(budget, int | float) and 0 < budget < self.frames_per_batch * self.num_batches:
            raise ValueError(
                f"The collector stops after total_frames={budget}, before this rank's share of the run "
                f"({self.num_batches} batches of {self.frames_per_batch} frames). Build it with total_frames=-1: "
                "the data's total_frames is the budget."
            )

    def update_policy_weights_(self) -> None:
        """Copies the module's policy weights into the collector's policy (nothing before the collector is built:
        it is built with the current ones). What :class:`~rl_lightning.callbacks.UpdateWeights` calls."""
        if self._torchrl_collector is None:
            return
        weights = TensorDict.from_module(self.policy_module).data
        if not weights.is_empty():  # a wrapped ``act`` runs the module itself: nothing to copy
            self._torchrl_collector.update_policy_weights_(weights)

    # -- batches ----------------------------------------------------------------------------------------

    def training_batch(self, index: int) -> TensorDictBase:
        """The collector's next batch in the data contract, ``[num_envs, T]`` (see the class docstring)."""
        collector = self.torchrl_collector
        raw = collector.next()
        if not isinstance(raw, TensorDictBase):
            raise TypeError(
                f"The collector returned {type(raw).__name__}, not a TensorDict batch. Build it without a "
                "replay_buffer (TorchRLDataModule trains on each batch as it comes)."
            )
        if raw.numel() != self.frames_per_batch:
            raise ValueError(
                f"The collector returned a batch of {raw.numel()} frames (batch_size={list(raw.batch_size)}), but "
                f"frames_per_batch={self.frames_per_batch}: the module counts {self.frames_per_batch} frames a batch. "
                "Build the collector with frames_per_batch equal to the data's and divisible by its envs (and "
                "workers)."
            )
        steps = raw.batch_size[-1] if raw.batch_dims else 0
        if raw.batch_dims == 0 or raw.numel() != self.num_envs * steps:
            raise ValueError(
                f"The collector's batch has batch_size={list(raw.batch_size)}, which is not num_envs={self.num_envs} "
                f"envs of {self.steps_per_batch} steps (time last). Set num_envs to the envs one batch holds: the "
                "env's batch size times the collector's workers."
            )
        batch = raw.reshape(self.num_envs, steps)
        if not self._batches_checked:
            self._check_batch(batch)
            self._batches_checked = True
        for flag in (keys.DONE, keys.TERMINATED, keys.TRUNCATED):
            if flag not in batch.keys():  # an observation at t is never done after a reset (the contract's meaning)
                batch.set(flag, torch.zeros_like(batch.get(keys.NEXT_DONE)))
        assert self._tracker is not None  # built with the collector
        self._tracker(batch)
        return batch

    def _check_batch(self, batch: TensorDictBase) -> None:
        """The first batch has the contract's keys and the action layout the evaluation envs take."""
        present = set(batch.keys(include_nested=True))
        missing = [key for key in keys.TRANSITION_KEYS if key not in present]
        if missing:
            raise KeyError(
                f"The collector's batch lacks {missing} (it has {sorted(map(str, present))}). rl_lightning's "
                "losses read torchrl's keys: collect from an env with an 'observation' entry and terminated and "
                "truncated flags (torchrl's GymEnv has them), with a policy that writes 'action'."
            )
        observation = batch.get(keys.OBSERVATION)
        if isinstance(self.observation_space, gym.spaces.Box) and tuple(observation.shape[2:]) != tuple(
            self.observation_space.shape
        ):
            raise ValueError(
                f"The collector's observations have shape {list(observation.shape[2:])} per step, but {self.env_id!r} "
                f"has the observation space {self.observation_space}, which the model is built for and evaluated on. "
                "Collect from the env of env_id, or set env_id to the gymnasium id of the collector's env."
            )
        action = batch.get(keys.ACTION)
        if isinstance(self.action_space, gym.spaces.Box) and tuple(action.shape[2:]) != tuple(self.action_space.shape):
            raise ValueError(
                f"The collector's actions have shape {list(action.shape[2:])} per step, but {self.env_id!r} has the "
                f"action space {self.action_space}. Collect from the env of env_id, or set env_id to its gymnasium id."
            )
        if isinstance(self.action_space, gym.spaces.Discrete) and (
            action.dim() != 2 or action.is_floating_point() or action.dtype == torch.bool
        ):
            raise ValueError(
                f"The batch's actions have shape {list(action.shape)} and dtype {action.dtype}, but the action space "
                f"{self.action_space} takes one index per step ([num_envs, T] integers): torchrl's GymEnv encodes "
                "discrete actions one-hot by default. Build it with GymEnv(..., categorical_action_encoding=True) "
                "and a policy that samples indices (e.g. a Categorical ProbabilisticActor)."
            )

    # -- Lightning hooks ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._given_collector is None and self._collector_factory is None and self._env is None:
            raise ValueError(
                "TorchRLDataModule has neither a torchrl collector nor a torchrl env to train on (without them it only "
                "evaluates: validate, test, predict). Pass collector=Collector(...) (or a function of the policy that "
                "builds one), or env=GymEnv(...) (or a function that builds one; from YAML, its import path)."
            )
        if stage == "fit" and self._given_collector is not None:
            self._check_collector(self._given_collector)  # the world size is known now: this rank's share

    def close(self, force: bool = False) -> None:
        """Shuts the collector down (a collector passed as an object too: a fit ends with it) and closes the
        evaluation envs."""
        if self._torchrl_collector is not None:
            self._torchrl_collector.shutdown()
            self._torchrl_collector = None
            self._given_collector_closed = self._given_collector is not None
        super().close(force)


def _check_collector_argument(collector: Any, built: bool = False) -> None:
    what = "The collector factory returned" if built else "collector is"
    if isinstance(collector, MultiAsyncCollector):
        raise ValueError(
            f"{what} a torchrl MultiAsyncCollector, which collects the next batch while the module trains on this "
            "one, with the weights of before the update. Use a MultiSyncCollector (its workers collect when the "
            "batch is asked for) or a Collector."
        )
    if isinstance(collector, BaseCollector):
        return
    if built or not callable(collector):
        raise TypeError(
            f"{what} a {type(collector).__name__}, not a torchrl collector. Pass a torchrl Collector or "
            "MultiSyncCollector, or a function of the policy that builds one."
        )


def _check_env(env: EnvBase, num_envs: int, observation_space: gym.Space, action_space: gym.Space, env_id: str) -> None:
    """The torchrl env steps ``num_envs`` envs whose observations and actions are those of ``env_id``'s spaces (what
    the model is built for and evaluated on)."""
    envs = int(env.batch_size.numel())
    if envs != num_envs:
        raise ValueError(
            f"The torchrl env has batch_size={list(env.batch_size)} ({envs} envs), but num_envs={num_envs}. Set "
            f"num_envs={envs}."
        )
    spec = env.full_action_spec[keys.ACTION]
    if isinstance(action_space, gym.spaces.Discrete) and spec.shape[len(env.batch_size) :] != torch.Size([]):
        raise ValueError(
            f"The torchrl env's action spec has shape {list(spec.shape)} per step ({type(spec).__name__}), but the "
            f"action space {action_space} takes one index: torchrl's GymEnv encodes discrete actions one-hot by "
            "default. Build it with GymEnv(..., categorical_action_encoding=True)."
        )
    batch_dims = len(env.batch_size)
    observation_spec = env.full_observation_spec.get(keys.OBSERVATION, None)
    differs: list[str] = []
    if observation_spec is None:
        differs.append(f"it has no 'observation' entry (its observations: {list(env.full_observation_spec.keys())})")
    elif isinstance(observation_space, gym.spaces.Box) and tuple(observation_spec.shape[batch_dims:]) != tuple(
        observation_space.shape
    ):
        differs.append(f"observations of shape {list(observation_spec.shape[batch_dims:])}, not {observation_space}")
    if isinstance(action_space, gym.spaces.Discrete):
        n = getattr(getattr(spec, "space", None), "n", None)
        if n is not None and int(n) != int(action_space.n):
            differs.append(f"{n} discrete actions, not {action_space}")
    elif isinstance(action_space, gym.spaces.Box):
        low, high = getattr(spec, "low", None), getattr(spec, "high", None)
        if tuple(spec.shape[batch_dims:]) != tuple(action_space.shape):
            differs.append(f"actions of shape {list(spec.shape[batch_dims:])}, not {action_space}")
        elif low is not None and high is not None:
            env_low, env_high = low.cpu().numpy(), high.cpu().numpy()  # broadcast over the env's batch dims
            if not (np.allclose(env_low, action_space.low) and np.allclose(env_high, action_space.high)):
                differs.append(f"action bounds {env_low.tolist()}..{env_high.tolist()}, not {action_space}")
    if differs:
        raise ValueError(
            f"The torchrl env does not step {env_id!r}, whose spaces the model is built for and evaluated on: "
            f"{'; '.join(differs)}. Give the env of env_id (e.g. GymEnv({env_id!r}, "
            "categorical_action_encoding=True)), or set env_id to the gymnasium id of the env you give."
        )
