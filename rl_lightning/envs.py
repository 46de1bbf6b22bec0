"""Environment construction: a gymnasium env id plus wrappers listed in the config, vectorized.

Example:
    >>> envs = make_vec_env("CartPole-v1", num_envs=2, seed=0)
    >>> envs.observation_space.shape
    (2, 4)
    >>> envs.close()
"""

from __future__ import annotations

import functools
import importlib
import inspect
import multiprocessing
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from rl_lightning.envpool import make_envpool_vec_env

Vectorization = Literal["sync", "async", "envpool"]
"""``"sync"`` steps the envs in this process, ``"async"`` in one subprocess per env (gymnasium's vector envs),
``"envpool"`` in EnvPool's C++ thread pool (:func:`rl_lightning.envpool.make_envpool_vec_env`; the ``envpool``
extra)."""
VECTORIZATIONS = ("sync", "async", "envpool")
ATARI_EXTRA = "pip install 'rl-lightning[atari]'"
"""How to install what the ``ALE/...`` env ids need (ale-py, which ships the ROMs)."""
EPISODE_STATISTICS_KEY = "episode"
"""The info entry where :class:`gymnasium.wrappers.RecordEpisodeStatistics`, which :func:`make_env` puts below
the training wrappers, reports the return and length of each whole episode (see :func:`make_env`)."""
WrapperSpec = str | dict[str, Any]
"""A wrapper in the config: ``"gymnasium.wrappers.ClipReward"`` or
``{"class_path": "gymnasium.wrappers.ClipReward", "init_args": {"min_reward": -1.0}}``."""


class FrameSkip(gym.Wrapper):
    """Repeats each action ``skip`` times and sums the rewards, stopping early when the episode ends.

    Example:
        >>> env = FrameSkip(gym.make("CartPole-v1"), skip=2)
        >>> _ = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(0)
        >>> reward
        2.0
    """

    def __init__(self, env: gym.Env, skip: int) -> None:
        super().__init__(env)
        if skip < 1:
            raise ValueError(f"FrameSkip needs skip >= 1, got {skip}.")
        self.skip = skip

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def _import(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"Wrapper {path!r} is not an import path; expected e.g. 'gymnasium.wrappers.ClipReward'.")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"Cannot import wrapper {path!r} ({err}). Give the full import path of a gymnasium.Wrapper subclass, "
            "e.g. 'gymnasium.wrappers.ClipReward'."
        ) from err


def resolve_wrappers(specs: Sequence[WrapperSpec] | None) -> list[Callable[[gym.Env], gym.Env]]:
    """Turns wrapper specs from the config into callables ``env -> wrapped env``, checking them up front.

    Raises:
        ValueError: when a spec names no importable ``gymnasium.Wrapper`` or its ``init_args`` do not fit.
    """
    factories: list[Callable[[gym.Env], gym.Env]] = []
    for spec in specs or []:
        if isinstance(spec, str):
            path, init_args = spec, {}
        elif isinstance(spec, dict) and "class_path" in spec and set(spec) <= {"class_path", "init_args"}:
            path, init_args = spec["class_path"], dict(spec.get("init_args") or {})
        else:
            raise ValueError(
                f"Wrapper spec {spec!r} is not understood; expected an import path string or "
                "{'class_path': 'gymnasium.wrappers.X', 'init_args': {...}}."
            )
        cls = _import(path)
        if not (inspect.isclass(cls) and issubclass(cls, gym.Wrapper | gym.ObservationWrapper)):
            raise ValueError(f"Wrapper {path!r} is {cls!r}, not a gymnasium.Wrapper subclass.")
        try:
            inspect.signature(cls).bind(None, **init_args)
        except TypeError as err:
            raise ValueError(f"init_args {init_args} do not fit {path}{inspect.signature(cls)}: {err}") from err
        factories.append(functools.partial(cls, **init_args))
    return factories


def _import_ale(env_id: str) -> None:
    """Registers the ``ALE/...`` ids by importing ale-py (gymnasium does not import it by itself).

    Raises:
        ModuleNotFoundError: naming the extra to install when ale-py is missing.
    """
    if not env_id.startswith("ALE/"):
        return
    try:
        importlib.import_module("ale_py")  # registers the ALE/... ids (what gym.register_envs(ale_py) needs)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Env {env_id!r} is an Atari game of the Arcade Learning Environment, but ale-py cannot be imported "
            f"({err}). Install the atari extra: {ATARI_EXTRA} (ale-py ships the ROMs)."
        ) from err


def make_env(
    env_id: str,
    wrappers: Sequence[WrapperSpec] | None = None,
    frame_skip: int = 1,
    render_mode: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    train_wrappers: Sequence[WrapperSpec] | None = None,
) -> gym.Env:
    """Makes one env from a registered id (``"module:EnvId-v0"`` imports the module that registers it; ``"ALE/..."``
    ids import ale-py).

    The env is ``gym.make(env_id, render_mode=render_mode, **env_kwargs)``, then :class:`FrameSkip` when
    ``frame_skip > 1``, then ``wrappers`` (innermost first), then, only when ``train_wrappers`` are given,
    :class:`gymnasium.wrappers.RecordEpisodeStatistics` and the ``train_wrappers``. The recorder sits below the
    training wrappers, so the ``info["episode"]`` it writes when an episode of the env ends holds the return and
    length of the whole episode as ``wrappers`` shape it: reward clipping and episodic life, applied only to
    training, do not change them (the collector reads them, see ``Collector(episodes_from_info=True)``). Like
    stable-baselines3's ``Monitor``, except that lengths count agent steps (after ``frame_skip`` and ``wrappers``).
    An episode that a training wrapper cuts short (a ``TimeLimit`` among them) is not reported: the game it cut
    did not end.

    Args:
        env_id: a registered gymnasium id.
        wrappers: wrapper specs applied to every env, training and evaluation (see :func:`resolve_wrappers`).
        frame_skip: env frames per agent step (:class:`FrameSkip`).
        render_mode: passed to ``gym.make``.
        env_kwargs: keyword arguments of ``gym.make``, e.g. ``{"frameskip": 1, "repeat_action_probability": 0.0}``
            for ``ALE/Pong-v5`` under ``gymnasium.wrappers.AtariPreprocessing``.
        train_wrappers: wrapper specs for training envs only, applied after ``wrappers`` (e.g.
            :class:`EpisodicLife`, ``gymnasium.wrappers.ClipReward``).

    Raises:
        ValueError: for an id that is not registered, naming the id and how to register one, or ``env_kwargs``
            the env does not take.
        ModuleNotFoundError: for an ``ALE/...`` id without ale-py, naming the extra to install.
    """
    _import_ale(env_id)
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:  # envs that are never rendered need not take the argument
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError) as err:
        raise ValueError(
            f"Unknown environment id {env_id!r} ({err}). Use a registered gymnasium id such as 'CartPole-v1', "
            "or 'my_package.my_module:MyEnv-v0' to import the module that registers your own env."
        ) from err
    except TypeError as err:
        raise ValueError(
            f"env_kwargs={dict(env_kwargs or {})} do not fit env {env_id!r} ({err}). Give only keyword arguments its "
            "constructor takes (see gymnasium.spec(env_id).kwargs for the registered ones)."
        ) from err
    if frame_skip != 1:
        env = FrameSkip(env, frame_skip)
    for wrap in resolve_wrappers(wrappers):
        env = wrap(env)
    if train_wrappers:
        env = gym.wrappers.RecordEpisodeStatistics(env, stats_key=EPISODE_STATISTICS_KEY)
        for wrap in resolve_wrappers(train_wrappers):
            env = wrap(env)
    return env


class EpisodicLife(gym.Wrapper):
    """Ends the episode (``terminated``) when an Atari game loses a life; the game itself goes on.

    For training only (``RLDataModule(train_wrappers=[...])``): the value of a lost life is not bootstrapped, which
    speeds up learning in games with lives (the Nature DQN and PPO Atari setups); evaluation plays whole games.
    After a life loss, ``reset`` does not reset the game: it takes one no-op step (action 0) and returns its
    observation, as stable-baselines3's ``EpisodicLifeEnv``; a real reset happens when the game is over, or when
    ``reset`` is given a seed. Gymnasium has no such wrapper of its own (``AtariPreprocessing`` can end episodes
    on life loss, but for evaluation too).

    The env must be an ALE env (``env.unwrapped.ale``); place it outside ``AtariPreprocessing`` and
    ``FrameStackObservation``, so that the no-op step goes through them.

    Example:
        >>> import ale_py
        >>> env = EpisodicLife(gym.make("ALE/Breakout-v5"))
        >>> _ = env.reset(seed=0)
        >>> env.lives
        5
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not hasattr(env.unwrapped, "ale"):
            raise ValueError(
                f"EpisodicLife reads the lives of an Atari game (env.unwrapped.ale.lives()), but {env.unwrapped} is "
                "not an ALE env. Use it with ALE/... ids (ale-py), or remove it from the wrappers."
            )
        self.lives = 0
        """Lives left after the last step or reset."""
        self.game_over = True
        """Whether the game itself ended at the last step (the next reset is a real one)."""

    def _lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())  # type: ignore[attr-defined]

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self._lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op step ended the game
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self._lives()
        return obs, info


OBSERVATION_LEAVES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
"""The observation spaces the collector stores, alone or as the leaves of a (nested) ``Dict`` space."""


def check_observation_space(space: gym.Space, env_id: str, wrappers: str = "data.wrappers") -> None:
    """Raises unless ``space`` is one the collector stores: a ``Box``, ``Discrete``, ``MultiDiscrete`` or
    ``MultiBinary`` space, or a ``Dict`` (possibly nested) of those.

    Args:
        space: the env's (single) observation space.
        env_id: named in the message.
        wrappers: where the fixing wrapper goes, named in the message.

    Raises:
        ValueError: naming the space (and its key inside a ``Dict``) and the wrapper that fixes it.

    Example:
        >>> check_observation_space(gym.spaces.Dict({"goal": gym.spaces.Discrete(4)}), "MyEnv-v0")
    """

    def check(sub: gym.Space, path: tuple[str, ...]) -> None:
        if isinstance(sub, gym.spaces.Dict):
            for key, leaf in sub.spaces.items():
                check(leaf, (*path, key))
            return
        if isinstance(sub, OBSERVATION_LEAVES):
            return
        where = f" at key {'.'.join(path)!r} of its Dict observation space" if path else ""
        raise ValueError(
            f"Env {env_id!r} has a {type(sub).__name__} observation space{where} ({sub}); rl_lightning collects Box, "
            "Discrete, MultiDiscrete and MultiBinary observations, and Dict spaces of those. Add "
            f"'gymnasium.wrappers.FlattenObservation' to {wrappers} to flatten it into a Box, or a gymnasium "
            "ObservationWrapper that turns it into a Dict."
        )

    check(space, ())


def check_rgb_array(
    env_id: str,
    wrappers: Sequence[WrapperSpec] | None,
    frame_skip: int,
    who: str,
    env_kwargs: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    """Makes one env with ``render_mode="rgb_array"``, renders its first frame and returns the frame's shape.

    Raises:
        ValueError: naming the env id when it does not list ``"rgb_array"`` in ``metadata["render_modes"]`` or
            its ``render()`` does not return an ``[H, W, 3]`` uint8 array.
    """
    env = make_env(env_id, wrappers, frame_skip, env_kwargs=env_kwargs)
    modes = list(env.metadata.get("render_modes") or [])
    env.close()
    if "rgb_array" not in modes:
        raise ValueError(
            f"{who} renders frames of env {env_id!r} with render_mode='rgb_array', but that env supports "
            f"render_modes={modes}. Use an env whose metadata['render_modes'] includes 'rgb_array', or turn "
            "the rendering off."
        )
    env = make_env(env_id, wrappers, frame_skip, render_mode="rgb_array", env_kwargs=env_kwargs)
    try:
        env.reset(seed=0)
        frame = env.render()
    finally:
        env.close()
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
        got = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}".strip()
        raise ValueError(
            f"{who}: env {env_id!r} with render_mode='rgb_array' returned {got} from render(); expected an "
            "[H, W, 3] uint8 array. Fix the env's render() or turn the rendering off."
        )
    return tuple(frame.shape)


def _make_worker_env(
    env_id: str,
    wrappers: Sequence[WrapperSpec] | None,
    frame_skip: int,
    render_mode: str | None,
    env_kwargs: Mapping[str, Any] | None,
    train_wrappers: Sequence[WrapperSpec] | None,
) -> gym.Env:
    """``make_env`` in an async env's subprocess, with the signal handlers a worker needs.

    The worker is forked from the trainer's process and inherits its Python signal handlers: Lightning's SIGTERM
    handler only sets a flag, so ``terminate()`` would never end the worker (and interpreter exit, which
    terminates and joins daemon processes, would hang). SIGTERM gets its default back. SIGINT is ignored: Ctrl-C
    in a terminal reaches the whole process group, and the trainer's process decides what it means
    (``GracefulInterrupt`` finishes the batch, which needs the workers alive, then closes them).
    """
    if multiprocessing.parent_process() is not None:  # AsyncVectorEnv also calls it once in the trainer's process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return make_env(env_id, wrappers, frame_skip, render_mode, env_kwargs, train_wrappers)


def make_vec_env(
    env_id: str,
    num_envs: int,
    wrappers: Sequence[WrapperSpec] | None = None,
    frame_skip: int = 1,
    vectorization: Vectorization = "sync",
    seed: int | None = None,
    render_mode: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    train_wrappers: Sequence[WrapperSpec] | None = None,
) -> gym.vector.VectorEnv:
    """Makes ``num_envs`` copies of an env (see :func:`make_env`), stepped together, with same-step autoreset.

    Same-step autoreset returns the reset observation of a finished env directly and keeps the final one
    in ``info["final_obs"]``, which the collector stores as ``("next", "observation")``. With
    ``render_mode="rgb_array"``, ``envs.render()`` returns a tuple of ``[H, W, 3]`` uint8 frames, one per env,
    for sync and async vectorization alike (gymnasium 1.x).

    ``vectorization="envpool"`` makes EnvPool's vector env (:func:`rl_lightning.envpool.make_envpool_vec_env`),
    which does its own preprocessing through ``env_kwargs``: gymnasium ``wrappers``, ``train_wrappers``,
    ``frame_skip`` and ``render_mode`` are refused with it.

    Raises:
        ValueError: for an unknown ``vectorization``, or an option EnvPool does not take.
    """
    if vectorization not in VECTORIZATIONS:
        raise ValueError(
            f"vectorization={vectorization!r} is not supported; use one of {', '.join(map(repr, VECTORIZATIONS))}."
        )
    envs: gym.vector.VectorEnv
    if vectorization == "envpool":
        refused = {
            "wrappers": wrappers,
            "train_wrappers": train_wrappers,
            "frame_skip": frame_skip if frame_skip != 1 else None,
            "render_mode": render_mode,
        }
        for name, value in refused.items():
            if value:
                raise ValueError(
                    f"vectorization='envpool' does not take {name}={value!r}: EnvPool preprocesses inside its own "
                    "envs, configured through env_kwargs (e.g. {'episodic_life': True, 'reward_clip': True, "
                    "'frame_skip': 4} for Atari). "
                    f"Remove {name}, or use vectorization 'sync' or 'async'."
                )
        return make_envpool_vec_env(env_id, num_envs, seed, dict(env_kwargs) if env_kwargs else None)
    make = functools.partial(
        make_env if vectorization == "sync" else _make_worker_env,
        env_id,
        wrappers,
        frame_skip,
        render_mode,
        env_kwargs,
        train_wrappers,
    )
    if vectorization == "sync":
        envs = gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
    else:
        envs = gym.vector.AsyncVectorEnv([make] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
    if seed is not None:
        envs.reset(seed=seed)
    return envs
