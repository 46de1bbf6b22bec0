"""Spaces as plain data: a round trip through builtin types gives the same space back."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from rl_lightning.spaces import space_from_dict, space_to_dict

SPACES = {
    "box-uniform": gym.spaces.Box(-1.0, 1.0, (3, 2)),
    "box-unbounded": gym.spaces.Box(-np.inf, np.inf, (4,), dtype=np.float64),
    "box-per-dim": gym.spaces.Box(
        np.array([-1.0, 0.0, -np.inf], dtype=np.float32), np.array([1.0, 5.0, 2.5], dtype=np.float32)
    ),
    "box-per-dim-high": gym.spaces.Box(0.0, np.array([1.0, 2.0, 3.0], dtype=np.float32)),
    "box-uint8": gym.spaces.Box(0, 255, (2, 2), dtype=np.uint8),
    "discrete": gym.spaces.Discrete(5),
    "discrete-start": gym.spaces.Discrete(3, start=-1),
    "multi-discrete": gym.spaces.MultiDiscrete([3, 4, 2]),
    "multi-discrete-start": gym.spaces.MultiDiscrete([3, 4], start=[1, -2]),
    "multi-discrete-2d": gym.spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, 3]]),
    "multi-binary": gym.spaces.MultiBinary(4),
    "multi-binary-2d": gym.spaces.MultiBinary([2, 3]),
}


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_round_trip(space: gym.spaces.Space) -> None:
    data = space_to_dict(space)
    # Builtin types only: the dict survives JSON (checkpoints, hyperparameter files) unchanged.
    assert json.loads(json.dumps(data)) == data
    restored = space_from_dict(data)
    assert type(restored) is type(space)
    assert restored == space
    assert restored.shape == space.shape and restored.dtype == space.dtype
    if isinstance(space, gym.spaces.Box):
        np.testing.assert_array_equal(restored.low, space.low)
        np.testing.assert_array_equal(restored.high, space.high)
    if isinstance(space, gym.spaces.Discrete):
        assert restored.start == space.start
    if isinstance(space, gym.spaces.MultiDiscrete):
        np.testing.assert_array_equal(restored.nvec, space.nvec)
        np.testing.assert_array_equal(restored.start, space.start)


def test_box_bounds_are_stored_compactly_when_uniform() -> None:
    assert space_to_dict(SPACES["box-uniform"]) == {
        "type": "Box",
        "shape": [3, 2],
        "dtype": "float32",
        "low": -1.0,
        "high": 1.0,
    }
    per_dim = space_to_dict(SPACES["box-per-dim"])
    assert per_dim["low"] == [-1.0, 0.0, -np.inf] and per_dim["high"] == [1.0, 5.0, 2.5]


def test_a_space_passes_through() -> None:
    space = gym.spaces.Discrete(2)
    assert space_from_dict(space) is space


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Tuple([gym.spaces.Discrete(2)]), gym.spaces.Text(4)],
)
def test_unsupported_space(space: gym.spaces.Space) -> None:
    with pytest.raises(
        ValueError, match="is not supported; expected Box, Discrete, MultiDiscrete, MultiBinary or Dict"
    ):
        space_to_dict(space)


def test_nested_dict_space_round_trip() -> None:
    space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "robot": gym.spaces.Dict({"pos": gym.spaces.Box(-1.0, 1.0, (2,)), "mode": gym.spaces.Discrete(3, start=1)}),
        }
    )
    data = space_to_dict(space)
    assert data["spaces"]["robot"]["spaces"]["mode"] == {"type": "Discrete", "n": 3, "start": 1}
    assert space_from_dict(data) == space


def test_unreadable_dict() -> None:
    with pytest.raises(ValueError, match=r"Cannot read a space from \{'type': 'Tuple'\}.*space_to_dict"):
        space_from_dict({"type": "Tuple"})
