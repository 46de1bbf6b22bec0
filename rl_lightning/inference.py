"""What ``model.predict`` does around the policy: a user's observations checked against the observation space and
turned into a batch, and the policy's actions turned into what the env takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_lightning.encoders import Observation


def policy_input(observation: Any, space: gym.Space) -> tuple[Observation, bool]:
    """One observation or a batch of them (numpy, torch or nested lists; a mapping for a ``Dict`` space) as the batch
    the policy takes, and whether a batch was given.

    Raises:
        ValueError: for an observation whose shape is neither the space's nor a batch of it, or whose dtype cannot
            be cast to the space's within its kind (a float image to ``uint8``, a float to a ``Discrete`` index),
            naming the key, the shape or dtype given and the one expected.

    Example:
        >>> batch, batched = policy_input(np.zeros(4), gym.spaces.Box(-1, 1, (4,)))
        >>> batch.shape, batch.dtype, batched
        (torch.Size([1, 4]), torch.float32, False)
    """
    if not isinstance(space, gym.spaces.Dict):
        tensor, batched = _leaf_input(observation, space, "observation")
        return tensor, batched
    leaves: dict[str, tuple[torch.Tensor, bool]] = {}
    _dict_leaves(observation, space, (), leaves)
    kinds = {batched for _, batched in leaves.values()}
    sizes = {tensor.shape[0] for tensor, _ in leaves.values()}
    if len(kinds) > 1 or len(sizes) > 1:
        given = {key: tuple(tensor.shape) for key, (tensor, _) in leaves.items()}
        raise ValueError(
            f"The observation's entries have batch shapes {given} that do not agree: expected every entry to be one "
            "observation of its space, or every entry a batch of the same size."
        )
    result = TensorDict({}, batch_size=[sizes.pop()])
    for key, (tensor, _) in leaves.items():
        result.set(tuple(key.split(".")), tensor)
    return result, kinds.pop()


def _dict_leaves(
    observation: Any, space: gym.spaces.Dict, path: tuple[str, ...], out: dict[str, tuple[torch.Tensor, bool]]
) -> None:
    name = ".".join(path) or "observation"
    if not isinstance(observation, Mapping | TensorDict):
        raise ValueError(
            f"{name} is a {type(observation).__name__}, but the observation space is a Dict space with the keys "
            f"{list(space.spaces)}: expected a mapping of those keys to arrays."
        )
    missing = [key for key in space.spaces if key not in observation.keys()]
    if missing:
        raise ValueError(
            f"{name} has the keys {list(observation.keys())}, missing {missing}: expected the keys of the observation "
            f"space, {list(space.spaces)}."
        )
    for key, sub in space.spaces.items():
        value = observation[key]
        if isinstance(sub, gym.spaces.Dict):
            _dict_leaves(value, sub, (*path, key), out)
        else:
            out[".".join((*path, key))] = _leaf_input(value, sub, ".".join((*path, key)))


def _leaf_input(observation: Any, space: gym.Space, name: str) -> tuple[torch.Tensor, bool]:
    """One array of a space that is not a ``Dict``: checked, batched and cast to the space's dtype."""
    if isinstance(observation, torch.Tensor):
        tensor = observation.detach()
        given_dtype = _numpy_dtype(tensor.dtype)
    else:
        array = np.asarray(observation)
        given_dtype = array.dtype
        tensor = torch.from_numpy(array) if array.dtype != object else torch.empty(0)
    expected = tuple(space.shape or ())
    target = np.dtype(space.dtype) if space.dtype is not None else np.dtype(np.float32)
    if given_dtype is None or not np.can_cast(given_dtype, target, casting="same_kind"):
        raise ValueError(
            f"{name} has dtype {given_dtype if given_dtype is not None else tensor.dtype}, which does not fit the "
            f"observation space {space}: expected {target} (or a dtype of its kind, such as "
            f"{'float64' if target.kind == 'f' else 'int32'}). Pass the observation the env returned."
        )
    shape = tuple(tensor.shape)
    if shape == expected:
        batched = False
        tensor = tensor.unsqueeze(0)
    elif len(shape) == len(expected) + 1 and shape[1:] == expected:
        batched = True
    else:
        raise ValueError(
            f"{name} has shape {shape}, which does not fit the observation space {space}: expected {expected} (one "
            f"observation) or (batch, {', '.join(map(str, expected))}) (a batch). Pass the observation the env "
            "returned, or a batch of them stacked on a first dim."
        )
    return tensor.to(_torch_dtype(target)), batched


def _numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:  # bfloat16 and other dtypes numpy lacks
        return np.dtype(np.float32) if dtype.is_floating_point else None


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def env_action(action: torch.Tensor, space: gym.Space) -> np.ndarray:
    """A batch of policy actions as the env takes them: numpy in the action space's dtype, clipped to a ``Box``'s
    bounds (what the collector does with the actions it steps the envs with)."""
    array = action.detach().cpu().numpy()
    if isinstance(space, gym.spaces.Box):
        array = np.clip(array, space.low, space.high)
    return array.astype(space.dtype, copy=False) if space.dtype is not None else array
