"""Observation and action spaces as plain data, so they live in hyperparameters and checkpoints."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

SpaceLike = gym.spaces.Space | dict[str, Any]


def space_to_dict(space: gym.spaces.Space) -> dict[str, Any]:
    """Describes a ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` or ``Dict`` space with builtin types.

    Example:
        >>> space_to_dict(gym.spaces.Dict({"goal": gym.spaces.Discrete(3)}))
        {'type': 'Dict', 'spaces': {'goal': {'type': 'Discrete', 'n': 3, 'start': 0}}}
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        uniform = bool(np.all(low == low.flat[0]) and np.all(high == high.flat[0]))
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": float(low.flat[0]) if uniform else low.tolist(),
            "high": float(high.flat[0]) if uniform else high.tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": space.n if isinstance(space.n, int) else list(space.n)}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {key: space_to_dict(sub) for key, sub in space.spaces.items()}}
    raise ValueError(
        f"Space {space} is not supported; expected Box, Discrete, MultiDiscrete, MultiBinary or Dict. Turn a Tuple "
        "space into a Dict with a gymnasium ObservationWrapper, or flatten it with "
        "gymnasium.wrappers.FlattenObservation."
    )


def space_from_dict(data: SpaceLike) -> gym.spaces.Space:
    """Inverse of :func:`space_to_dict`; a space passes through unchanged."""
    if isinstance(data, gym.spaces.Space):
        return data
    kind = data.get("type")
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        shape = tuple(data["shape"])
        low = np.broadcast_to(np.asarray(data["low"], dtype=dtype), shape)
        high = np.broadcast_to(np.asarray(data["high"], dtype=dtype), shape)
        return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(data["nvec"], start=data.get("start"))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(data["n"])
    if kind == "Dict":
        return gym.spaces.Dict({key: space_from_dict(sub) for key, sub in data["spaces"].items()})
    raise ValueError(f"Cannot read a space from {data!r}; expected a dict written by space_to_dict.")


def check_action_space(algorithm: str, space: SpaceLike | None, kind: Literal["bounded Box", "Discrete"]) -> None:
    """Raises ``ValueError`` unless ``space`` is a bounded 1-D ``Box`` or a ``Discrete`` space (``None`` passes: the
    model's constructor reports a missing space), naming what fits instead.

    Example:
        >>> check_action_space("DQN", gym.spaces.Discrete(2), "Discrete")
    """
    if space is None:
        return
    space = space_from_dict(space)
    if kind == "Discrete":
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(
                f"{algorithm} needs a Discrete action space; the env has {space}. For Box actions use "
                "rl_lightning.SAC, TD3 or DDPG (or PPO/A2C); or discretize the actions with a gymnasium ActionWrapper."
            )
    elif not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.is_bounded()):
        raise ValueError(
            f"{algorithm} needs a bounded 1-D Box action space; the env has {space}. For discrete actions use "
            "rl_lightning.DQN, PPO or A2C; for unbounded Box actions add gymnasium.wrappers.ClipAction or "
            "RescaleAction."
        )
