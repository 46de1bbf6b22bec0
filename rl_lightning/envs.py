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
from collections.abc import Callable, Sequence
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

Vectorization = Literal["sync", "async"]
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


def make_env(
    env_id: str,
    wrappers: Sequence[WrapperSpec] | None = None,
    frame_skip: int = 1,
    render_mode: str | None = None,
) -> gym.Env:
    """Makes one env from a registered id (``"module:EnvId-v0"`` imports the module that registers it).

    Raises:
        ValueError: for an id that is not registered, naming the id and how to register one.
    """
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except (gym.error.Error, ImportError) as err:
        raise ValueError(
            f"Unknown environment id {env_id!r} ({err}). Use a registered gymnasium id such as 'CartPole-v1', "
            "or 'my_package.my_module:MyEnv-v0' to import the module that registers your own env."
        ) from err
    if frame_skip != 1:
        env = FrameSkip(env, frame_skip)
    for wrap in resolve_wrappers(wrappers):
        env = wrap(env)
    return env


def check_rgb_array(env_id: str, wrappers: Sequence[WrapperSpec] | None, frame_skip: int, who: str) -> tuple[int, ...]:
    """Makes one env with ``render_mode="rgb_array"``, renders its first frame and returns the frame's shape.

    Raises:
        ValueError: naming the env id when it does not list ``"rgb_array"`` in ``metadata["render_modes"]`` or
            its ``render()`` does not return an ``[H, W, 3]`` uint8 array.
    """
    env = make_env(env_id, wrappers, frame_skip)
    modes = list(env.metadata.get("render_modes") or [])
    env.close()
    if "rgb_array" not in modes:
        raise ValueError(
            f"{who} renders frames of env {env_id!r} with render_mode='rgb_array', but that env supports "
            f"render_modes={modes}. Use an env whose metadata['render_modes'] includes 'rgb_array', or turn "
            "the rendering off."
        )
    env = make_env(env_id, wrappers, frame_skip, render_mode="rgb_array")
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
    env_id: str, wrappers: Sequence[WrapperSpec] | None, frame_skip: int, render_mode: str | None
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
    return make_env(env_id, wrappers, frame_skip, render_mode)


def make_vec_env(
    env_id: str,
    num_envs: int,
    wrappers: Sequence[WrapperSpec] | None = None,
    frame_skip: int = 1,
    vectorization: Vectorization = "sync",
    seed: int | None = None,
    render_mode: str | None = None,
) -> gym.vector.VectorEnv:
    """Makes ``num_envs`` copies of an env, stepped together, with same-step autoreset.

    Same-step autoreset returns the reset observation of a finished env directly and keeps the final one
    in ``info["final_obs"]``, which the collector stores as ``("next", "observation")``. With
    ``render_mode="rgb_array"``, ``envs.render()`` returns a tuple of ``[H, W, 3]`` uint8 frames, one per env,
    for sync and async vectorization alike (gymnasium 1.x).
    """
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization={vectorization!r} is not supported; use 'sync' or 'async'.")
    envs: gym.vector.VectorEnv
    if vectorization == "sync":
        fns = [functools.partial(make_env, env_id, wrappers, frame_skip, render_mode)] * num_envs
        envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    else:
        fns = [functools.partial(_make_worker_env, env_id, wrappers, frame_skip, render_mode)] * num_envs
        envs = gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    if seed is not None:
        envs.reset(seed=seed)
    return envs
