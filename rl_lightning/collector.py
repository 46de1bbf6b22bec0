"""Steps vector envs with a policy and returns one TensorDict per batch (the data contract of ``keys``).

The hot path writes into tensors preallocated once per batch (through numpy views, the cheapest way to
copy env output) and calls the policy once per step for all envs. No TensorDict is built per step, except the
view of a step's observations that the policy gets for a ``Dict`` observation space (an index into the batch's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, cast

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_lightning import keys
from rl_lightning.envs import EPISODE_STATISTICS_KEY

Observation: TypeAlias = torch.Tensor | TensorDict
"""A batch of observations: a tensor ``[num_envs, *obs_shape]``, or for a ``Dict`` observation space a
TensorDict ``batch_size=[num_envs]`` with one entry per key of the space (nested ``Dict`` → nested TensorDict)."""
Policy = Callable[[Observation], Mapping[str, torch.Tensor]]
"""Maps a batch of observations (see :data:`Observation`) to at least ``{"action": ...}``; every entry it returns is
stored in the batch under its key (e.g. ``action_log_prob``)."""

LeafPath = tuple[str, ...]


def observation_leaves(space: gym.Space) -> list[tuple[LeafPath, tuple[int, ...], torch.dtype]]:
    """``(path, shape, dtype)`` of each array an observation of ``space`` holds: one with path ``()`` for a flat
    space, one per leaf of a (nested) ``Dict`` space, in the space's key order.

    Example:
        >>> space = gym.spaces.Dict({"goal": gym.spaces.Discrete(4), "pos": gym.spaces.Box(0, 1, (2,))})
        >>> observation_leaves(space)
        [(('goal',), (), torch.int64), (('pos',), (2,), torch.float32)]
    """
    if isinstance(space, gym.spaces.Dict):
        return [
            ((key, *path), shape, dtype)
            for key, sub in space.spaces.items()
            for path, shape, dtype in observation_leaves(sub)
        ]
    return [((), tuple(space.shape or ()), torch.from_numpy(np.zeros((), dtype=space.dtype)).dtype)]


def _write(views: list[np.ndarray], paths: list[LeafPath], index: Any, observation: Any) -> None:
    """Writes ``observation`` (an array, or nested dicts of arrays) into ``view[index]`` for each leaf's view; a
    flat observation (one leaf, path ``()``) is written directly, the cheapest way."""
    if len(views) == 1 and not paths[0]:
        views[0][index] = observation
        return
    for path, view in zip(paths, views, strict=True):
        view[index] = _leaf(observation, path)


def as_observation(observation: Any, space: gym.Space) -> Observation:
    """A vector env's observations (an array, or nested dicts of arrays for a ``Dict`` space) as what the policy
    takes (see :data:`Observation`)."""
    if not isinstance(space, gym.spaces.Dict):
        return torch.from_numpy(np.asarray(observation))
    paths = [path for path, _, _ in observation_leaves(space)]
    leaves = [torch.from_numpy(np.asarray(_leaf(observation, path))) for path in paths]
    result = TensorDict({}, batch_size=leaves[0].shape[:1])
    for path, leaf in zip(paths, leaves, strict=True):
        result.set(path, leaf)
    return result


def _leaf(observation: Any, path: LeafPath) -> Any:
    for key in path:
        observation = observation[key]
    return observation


class _ActionAdapter:
    """Turns policy actions into what the vector env takes (numpy, clipped to a ``Box``'s bounds)."""

    def __init__(self, single_action_space: gym.Space) -> None:
        self.bounds = None
        if isinstance(single_action_space, gym.spaces.Box):
            self.bounds = (single_action_space.low, single_action_space.high)

    def __call__(self, action: torch.Tensor) -> np.ndarray:
        array = action.cpu().numpy()
        if self.bounds is not None:
            array = np.clip(array, *self.bounds)
        return array


class EnvError(RuntimeError):
    """An environment raised, or the subprocess of an async env died, while the collector or :func:`evaluate`
    stepped it.

    The message names the env id, the env's index in the vector env, whether it happened in evaluation, the rank
    (under DDP) and how many frames had been stepped; the original exception is the ``__cause__``. Attributes:
    ``env_id``, ``index`` (``None`` when it cannot be told), ``frames``, ``evaluation``, ``rank`` (``None`` in a
    single-process run).
    """

    def __init__(
        self, envs: gym.vector.VectorEnv, env_id: str, err: BaseException, frames: int, evaluation: bool = False
    ) -> None:
        self.env_id, self.frames, self.evaluation = env_id, frames, evaluation
        self.index: int | None
        dead = _dead_worker(envs, err)
        if dead is not None:
            self.index, exit_code = dead
            what = f"the subprocess of env {self.index} died (exit code {exit_code}; {type(err).__name__}: {err})"
        else:
            self.index = _failing_index(err)
            which = f"env {self.index}" if self.index is not None else "one of the envs"
            what = f"{which} raised {type(err).__name__}: {err}"
        rank, world_size = _rank_and_world_size()
        self.rank = rank if world_size > 1 else None
        where = f" on rank {rank} of {world_size}" if self.rank is not None else ""
        envs_text = f"{envs.num_envs} envs, {type(envs).__name__}"
        if evaluation:
            when = f"during evaluation, after {frames} frames of this evaluation ({envs_text})"
            then = (
                "The evaluation stopped, and the run with it; checkpoints already written are untouched. Fix the "
                "environment or its wrappers, then run again (a fit resumes with --ckpt_path last)."
            )
        else:
            when = f"after {frames} frames collected by this process ({envs_text})"
            then = (
                "The run stopped before training on it; checkpoints already written are untouched. Fix the "
                "environment or its wrappers, then resume with --ckpt_path last."
            )
        super().__init__(f"Environment {env_id!r}{where}: {what}, {when}. {then}")


def _rank_and_world_size() -> tuple[int, int]:
    """This process's global rank and the world size: torch.distributed's once it is initialized, else the
    ``RANK``/``WORLD_SIZE`` variables launchers (and Lightning) set, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world_size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if rank.isdigit() and world_size.isdigit():
        return int(rank), int(world_size)
    return 0, 1


def _env_failure(
    envs: gym.vector.VectorEnv, env_id: str, err: Exception, frames: int, evaluation: bool = False
) -> EnvError:
    """The :class:`EnvError` for ``err``, after closing ``envs`` by force: a failed vector env cannot go on, and an
    async one would otherwise keep its other subprocesses (and its half-done step) until interpreter exit."""
    error = EnvError(envs, env_id, err, frames, evaluation)
    close_envs(envs, force=True)
    return error


def close_envs(envs: gym.vector.VectorEnv, force: bool = False) -> None:
    """Closes a vector env; closing twice does nothing.

    With ``force`` (a broken env, or a fit that failed) an async env's subprocesses are ended rather than asked to
    close: a dead worker, or one that raised mid-step, would never answer, and gymnasium's own forced close first
    waits for the pending step, which a dead worker's pipe breaks. SIGTERM, then SIGKILL for a worker still alive
    after a second (an env that installed its own SIGTERM handler).
    """
    if not (force and isinstance(envs, gym.vector.AsyncVectorEnv)):
        envs.close()
        return
    if envs.closed:
        return
    for process in envs.processes:
        if process.is_alive():
            process.terminate()
    for process in envs.processes:
        process.join(timeout=1.0)
        if process.is_alive():
            process.kill()
            process.join()
    for pipe in envs.parent_pipes:
        if pipe is not None:
            pipe.close()
    envs.closed = True


def _dead_worker(envs: gym.vector.VectorEnv, err: BaseException) -> tuple[int, int | None] | None:
    """``(index, exit code)`` of the first async env whose subprocess is gone."""
    processes = getattr(envs, "processes", ())
    if isinstance(err, EOFError | OSError):  # a closed pipe: give a dying worker a moment to be reaped
        for process in processes:
            process.join(timeout=0.05)
    for index, process in enumerate(processes):
        if not process.is_alive():
            return index, process.exitcode
    return None


def _failing_index(err: BaseException) -> int | None:
    """The index of the env that raised, read from gymnasium's vector env frames in the traceback: the loop
    variable of ``SyncVectorEnv.step``/``reset``, or the worker index ``AsyncVectorEnv`` re-raises from."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = type(frame.f_locals.get("self")).__name__
        if owner == "SyncVectorEnv" and isinstance(frame.f_locals.get("i"), int):
            found = frame.f_locals["i"]
        elif owner == "AsyncVectorEnv" and isinstance(frame.f_locals.get("index"), int):
            found = frame.f_locals["index"]
        tb = tb.tb_next
    return found


class Collector:
    """Collects batches of ``[num_envs, steps_per_batch]`` transitions.

    Args:
        envs: a gymnasium vector env made with ``AutoresetMode.SAME_STEP`` (see ``make_vec_env``).
        policy: see :data:`Policy`; called under ``torch.inference_mode()``.
        steps_per_batch: vector steps per batch (T).
        env_id: the envs' id, for error messages.
        pixels: also store each env's rendered frame of the observation at t under ``"pixels"``
            (``[num_envs, T, H, W, 3]`` uint8); the envs must be made with ``render_mode="rgb_array"``
            (e.g. ``make_vec_env(..., render_mode="rgb_array")``).
        pin_memory: allocate each batch in page-locked memory, so that moving it (and each step's observations)
            to a GPU is an asynchronous copy (``.to(device, non_blocking=True)``) instead of a synchronous one.
            Needs CUDA.
        episodes_from_info: take the return and length of each ended episode from the ``info["episode"]`` that
            :class:`gymnasium.wrappers.RecordEpisodeStatistics` writes (``make_vec_env`` puts one below the
            training wrappers, see :func:`~rl_lightning.envs.make_env`) instead of summing the rewards the envs
            return: episodes that end without it (a life lost under ``EpisodicLife``) get no statistics (0), and
            clipped or scaled training rewards do not change them.

    A ``Dict`` observation space (possibly nested) gives ``observation`` and ``("next", "observation")`` as
    TensorDicts ``[num_envs, T]`` with one entry per key (a ``Discrete`` leaf: int64 with shape ``[]``), and the
    policy a TensorDict ``[num_envs]`` of each step's observations.

    Example:
        >>> from rl_lightning.envs import make_vec_env
        >>> envs = make_vec_env("CartPole-v1", num_envs=2, seed=0)
        >>> policy = lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}
        >>> batch = Collector(envs, policy, steps_per_batch=8).collect()
        >>> batch.batch_size
        torch.Size([2, 8])
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        policy: Policy,
        steps_per_batch: int,
        pixels: bool = False,
        env_id: str = "the environment",
        pin_memory: bool = False,
        episodes_from_info: bool = False,
    ) -> None:
        if pin_memory and not torch.cuda.is_available():
            raise ValueError(
                "Collector(pin_memory=True) allocates batches in page-locked memory for asynchronous copies to a "
                "GPU, but CUDA is not available here. Use pin_memory=False (RLDataModule pins only when the "
                "trainer's device is a GPU)."
            )
        self.pin_memory = pin_memory
        if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError("Collector needs a vector env with autoreset_mode=AutoresetMode.SAME_STEP.")
        if pixels and envs.render_mode != "rgb_array":
            raise ValueError(
                f"Collector(pixels=True) stores rendered frames, but the envs have render_mode={envs.render_mode!r}; "
                "expected 'rgb_array'. Make them with rl_lightning.envs.make_vec_env(..., render_mode='rgb_array')."
            )
        self.pixels = pixels
        self.envs = envs
        self.env_id = env_id
        self.frames = 0
        """Frames this collector has collected (this process, since it was made)."""
        self.policy = policy
        self.steps_per_batch = steps_per_batch
        self.num_envs = envs.num_envs
        self._to_env = _ActionAdapter(envs.single_action_space)
        self.episodes_from_info = episodes_from_info
        self._obs_space = envs.single_observation_space
        self._obs_leaves = observation_leaves(self._obs_space)
        self._obs_paths = [path for path, _, _ in self._obs_leaves]
        self._obs: Any = None
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self._is_init = np.ones(self.num_envs, dtype=bool)  # whether each env's current observation starts an episode

    def reset(self, seed: int | None = None) -> None:
        """Resets every env (seeding them ``seed, seed + 1, ...``) and the running episode statistics; the next
        batch marks its first step ``is_init``."""
        try:
            self._obs, _ = self.envs.reset(seed=seed)
        except Exception as err:
            raise self._fail(err, self.frames) from err
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._is_init[:] = True

    def _fail(self, err: Exception, frames: int) -> EnvError:
        """The :class:`EnvError` for ``err``, after closing the envs (see :func:`_env_failure`)."""
        return _env_failure(self.envs, self.env_id, err, frames)

    def _empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin_memory)

    def _zeros(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, pin_memory=self.pin_memory)

    def _observations(self, n: int, steps: int) -> tuple[Observation, list[np.ndarray]]:
        """An empty batch of observations ``[n, steps]`` (a tensor, or a TensorDict for a ``Dict`` space) and the
        numpy views of its leaves, in the order of ``observation_leaves``."""
        leaves = [self._empty((n, steps, *shape), dtype) for _, shape, dtype in self._obs_leaves]
        views = [leaf.numpy() for leaf in leaves]
        if not isinstance(self._obs_space, gym.spaces.Dict):
            return leaves[0], views
        batch = TensorDict({}, batch_size=[n, steps])
        for path, leaf in zip(self._obs_paths, leaves, strict=True):
            batch.set(path, leaf)
        return batch, views

    def _pinned(self, obs: Observation) -> Observation:
        """A contiguous page-locked copy (a slice across ``[n, T]`` is strided, and its copy to the GPU is
        asynchronous only if contiguous)."""
        if isinstance(obs, torch.Tensor):
            return self._empty(obs.shape, obs.dtype).copy_(obs)
        return cast(TensorDict, obs.apply(lambda leaf: self._empty(leaf.shape, leaf.dtype).copy_(leaf)))

    @staticmethod
    def _episodes_from_info(
        info: dict[str, Any], t: int, episode_return: torch.Tensor, episode_length: torch.Tensor
    ) -> None:
        """Writes the statistics of the episodes ``RecordEpisodeStatistics`` reports ended at step ``t``."""
        final_info = info.get("final_info", {})
        ended = final_info.get(f"_{EPISODE_STATISTICS_KEY}")
        if ended is None:
            return
        stats = final_info[EPISODE_STATISTICS_KEY]
        for i in np.flatnonzero(ended):
            episode_return[i, t, 0] = float(stats["r"][i])
            episode_length[i, t, 0] = int(stats["l"][i])

    @torch.inference_mode()
    def collect(self) -> TensorDict:
        """Steps the envs ``steps_per_batch`` times and returns the batch, ``batch_size=[num_envs, T]``."""
        if self._obs is None:
            self.reset()
        n, steps = self.num_envs, self.steps_per_batch
        empty, zeros = self._empty, self._zeros
        obs, obs_views = self._observations(n, steps)
        next_obs, next_views = self._observations(n, steps)
        paths = self._obs_paths
        reward = empty((n, steps, 1), torch.float32)
        terminated = empty((n, steps, 1), torch.bool)
        truncated = empty((n, steps, 1), torch.bool)
        is_init = empty((n, steps, 1), torch.bool)
        episode_return = zeros((n, steps, 1), torch.float32)
        episode_length = zeros((n, steps, 1), torch.int64)
        reward_np, term_np, trunc_np, init_np = reward.numpy(), terminated.numpy(), truncated.numpy(), is_init.numpy()
        outputs: dict[str, torch.Tensor] = {}
        pixels: torch.Tensor | None = None
        if self.pixels:
            frames = _rendered(self.envs)
            pixels = empty((n, steps, *frames[0].shape), torch.uint8)
            pixels_np = pixels.numpy()

        current = self._obs
        for t in range(steps):
            _write(obs_views, paths, (slice(None), t), current)
            init_np[:, t, 0] = self._is_init
            if pixels is not None:
                # at t = 0 the frames rendered above to size the tensor are the current ones
                for env, frame in enumerate(_rendered(self.envs) if t else frames):
                    pixels_np[env, t] = frame
            step_obs = obs[:, t]
            if self.pin_memory:
                step_obs = self._pinned(step_obs)
            out = self.policy(step_obs)
            if not outputs:
                outputs = {k: empty((n, steps, *v.shape[1:]), v.dtype) for k, v in out.items()}
            for key, value in out.items():
                outputs[key][:, t] = value
            try:
                current, rew, term, trunc, info = self.envs.step(self._to_env(out[keys.ACTION]))
            except Exception as err:
                raise self._fail(err, self.frames + t * n) from err
            _write(next_views, paths, (slice(None), t), current)
            reward_np[:, t, 0] = rew
            term_np[:, t, 0] = term
            trunc_np[:, t, 0] = trunc
            self._episode_return += rew
            self._episode_length += 1
            done = self._is_init = term | trunc
            if done.any():
                for i in np.flatnonzero(done):
                    _write(next_views, paths, (i, t), info["final_obs"][i])
                    if not self.episodes_from_info:
                        episode_return[i, t, 0] = self._episode_return[i]
                        episode_length[i, t, 0] = self._episode_length[i]
                if self.episodes_from_info:
                    self._episodes_from_info(info, t, episode_return, episode_length)
                self._episode_return[done] = 0.0
                self._episode_length[done] = 0
        self._obs = current
        self.frames += n * steps
        for key, value in outputs.items():  # one check a batch (e.g. sampling from NaN logits picks an action)
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise FloatingPointError(
                    f"The policy returned NaN or inf {key!r} values in the batch of frames {self.frames - n * steps}"
                    f" to {self.frames} of {self.env_id}. Check the env's observations for NaN or inf; if they are "
                    "finite, the policy's weights are not (see the model's nonfinite and max_grad_norm)."
                )

        done_flags = torch.logical_or(terminated, truncated, out=empty(terminated.shape, torch.bool))  # pinned too
        not_done = zeros(done_flags.shape, torch.bool)
        if pixels is not None:
            outputs[keys.PIXELS] = pixels
        return TensorDict(
            {
                keys.OBSERVATION: obs,
                **outputs,
                keys.DONE: not_done,
                keys.TERMINATED: not_done,
                keys.TRUNCATED: not_done,
                keys.IS_INIT: is_init,
                keys.NEXT: {
                    keys.OBSERVATION: next_obs,
                    keys.REWARD: reward,
                    keys.DONE: done_flags,
                    keys.TERMINATED: terminated,
                    keys.TRUNCATED: truncated,
                    keys.EPISODE_RETURN: episode_return,
                    keys.EPISODE_LENGTH: episode_length,
                },
            },
            batch_size=[n, steps],
        )


@torch.inference_mode()
def evaluate(
    envs: gym.vector.VectorEnv,
    policy: Policy,
    num_episodes: int,
    seed: int | None = None,
    frames: list[np.ndarray] | None = None,
    max_frames: int | None = None,
    env_id: str = "the environment",
) -> TensorDict:
    """Runs ``num_episodes`` whole episodes spread over the envs and returns their returns and lengths.

    Every env runs a fixed quota of episodes (not "the first ones to finish", which would favour short
    episodes). Returns a TensorDict of ``episode_return`` and ``episode_length``, ``batch_size=[num_episodes]``.

    Args:
        envs: vector env with same-step autoreset.
        policy: see :data:`Policy`.
        num_episodes: episodes to run, over all envs.
        seed: resets the envs with ``seed, seed + 1, ...``.
        frames: when a list is given, the rendered frames of env 0 are appended to it (the envs must be made with
            ``render_mode="rgb_array"``): one frame per step of each of its episodes, showing the state the
            action was chosen in (same-step autoreset shows the next episode's first state, never the terminal
            one), so an episode of length L adds L frames.
        max_frames: stop appending to ``frames`` at this many frames (``None``: no limit).
        env_id: the envs' id, for error messages.

    Raises:
        EnvError: when an env raises or an async env's subprocess dies (the envs are then closed, see
            :func:`close_envs`).
    """
    n = envs.num_envs
    quota = np.array([(num_episodes + n - 1 - i) // n for i in range(n)])
    to_env = _ActionAdapter(envs.single_action_space)
    try:
        current, _ = envs.reset(seed=seed)
    except Exception as err:
        raise _env_failure(envs, env_id, err, 0, evaluation=True) from err
    running_return = np.zeros(n)
    running_length = np.zeros(n, dtype=np.int64)
    finished = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    limit = np.inf if max_frames is None else max_frames
    render = frames is not None and quota[0] > 0 and limit > 0
    steps = 0
    while (finished < quota).any():
        if render and frames is not None:
            frames.append(_render_first(envs))
            render = len(frames) < limit
        action = policy(as_observation(current, envs.single_observation_space))[keys.ACTION]
        try:
            current, rew, term, trunc, _ = envs.step(to_env(action))
        except Exception as err:
            raise _env_failure(envs, env_id, err, steps * n, evaluation=True) from err
        steps += 1
        running_return += rew
        running_length += 1
        for i in np.flatnonzero(term | trunc):
            if finished[i] < quota[i]:
                returns.append(float(running_return[i]))
                lengths.append(int(running_length[i]))
                finished[i] += 1
            running_return[i] = 0.0
            running_length[i] = 0
        render = render and finished[0] < quota[0]
    return TensorDict(
        {
            keys.EPISODE_RETURN: torch.tensor(returns, dtype=torch.float32),
            keys.EPISODE_LENGTH: torch.tensor(lengths, dtype=torch.int64),
        },
        batch_size=[num_episodes],
    )


def _render_first(envs: gym.vector.VectorEnv) -> np.ndarray:
    """The frame of env 0 (a sync vector env renders only that one; an async one renders them all)."""
    frame = envs.envs[0].render() if isinstance(envs, gym.vector.SyncVectorEnv) else _rendered(envs)[0]
    if not isinstance(frame, np.ndarray):
        raise ValueError(
            f"evaluate(frames=[...]) records rendered frames, but env 0 returned {type(frame).__name__} from "
            f"render() (render_mode={envs.render_mode!r}); make the envs with render_mode='rgb_array'."
        )
    return frame


def _rendered(envs: gym.vector.VectorEnv) -> tuple[np.ndarray, ...]:
    """``envs.render()``: in gymnasium 1.x a tuple of one frame per env, for sync and async vector envs alike."""
    return cast("tuple[np.ndarray, ...]", envs.render())
