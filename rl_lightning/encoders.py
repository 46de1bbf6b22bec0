"""Observation encoders: observations of any supported space in, flat float features out.

- :class:`FlatEncoder`: vectors (``Box``, ``MultiBinary``) flattened, ``Discrete`` and ``MultiDiscrete`` one-hot
  encoded, optionally normalized with running statistics.
- :class:`ImageEncoder`: ``uint8`` images through a CNN (the Nature DQN one by default), scaled to ``[0, 1]`` on
  the module's device, after the transfer, so batches and replay buffers stay ``uint8``.
- :class:`DictEncoder`: one encoder per key of a ``Dict`` space (nested ones too), features concatenated in the
  space's key order.

:func:`make_encoder` picks the encoder for a space. Every encoder has ``out_features``, maps a batch of observations
``[B, ...]`` (a tensor, or a TensorDict for ``Dict`` spaces) to ``[B, out_features]``, and has ``update`` for the
running statistics of observation normalization (a no-op where nothing is normalized: images never are).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, TypedDict

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase
from torch import nn
from torch.nn import functional as F

from rl_lightning.networks import orthogonal_linear

Observation = torch.Tensor | TensorDictBase
"""A batch of observations: a tensor ``[B, *shape]``, or a TensorDict ``[B]`` with one entry per key of a ``Dict``
space."""
Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor across ranks (``trainer.strategy.reduce`` with ``reduce_op="sum"``)."""


class CNNSpec(TypedDict, total=False):
    """The CNN of image observations. Every key is optional; the defaults are the Nature DQN CNN's (Mnih et al., 2015).

    Keys:
        channels: output channels of each convolution (``[32, 64, 64]``).
        kernel_sizes: kernel size of each convolution (``[8, 4, 3]``).
        strides: stride of each convolution (``[4, 2, 1]``).
        features: size of the linear layer after the convolutions, the encoder's output (``512``).
        layout: ``"auto"`` (the smaller of the first and last dims holds the channels), ``"channels_last"``
            (``[H, W, C]``, gymnasium's ALE frames) or ``"channels_first"`` (``[C, H, W]``, a
            ``FrameStackObservation`` of grayscale frames, EnvPool's Atari).
    """

    channels: list[int]
    kernel_sizes: list[int]
    strides: list[int]
    features: int
    layout: Literal["auto", "channels_last", "channels_first"]


NATURE_CNN: CNNSpec = {
    "channels": [32, 64, 64],
    "kernel_sizes": [8, 4, 3],
    "strides": [4, 2, 1],
    "features": 512,
    "layout": "auto",
}


def is_image_space(space: gym.Space) -> bool:
    """Whether observations of ``space`` are images: a ``uint8`` ``Box`` of 2 (``[H, W]``) or 3 dims bounded by
    ``[0, 255]``.

    Example:
        >>> is_image_space(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)), is_image_space(gym.spaces.Box(-1, 1, (4,)))
        (True, False)
    """
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) in (2, 3)
        and bool(np.all(space.low == 0))
        and bool(np.all(space.high == 255))
    )


class FlatEncoder(nn.Module):
    """Flattens ``Box`` and ``MultiBinary`` observations and one-hot encodes ``Discrete`` and ``MultiDiscrete`` ones,
    optionally normalizing the result.

    Normalization uses running mean and variance over every observation seen in training, kept in buffers (so they
    are checkpointed) and updated with :meth:`update`, which merges statistics across ranks when given a ``reduce``
    function.

    Example:
        >>> encoder = FlatEncoder(gym.spaces.MultiDiscrete([3, 2]))
        >>> encoder(torch.tensor([[2, 0]])).tolist()
        [[0.0, 0.0, 1.0, 1.0, 0.0]]
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor
    offset: torch.Tensor
    out_features: int

    def __init__(self, space: gym.Space, normalize: bool = False, clip: float = 10.0) -> None:
        super().__init__()
        self.one_hot: list[int] = []
        """Choices of each one-hot encoded entry (empty: the observation is flattened as it is)."""
        if isinstance(space, gym.spaces.Box | gym.spaces.MultiBinary):
            self.obs_shape: tuple[int, ...] = tuple(space.shape)
            self.out_features = math.prod(space.shape)
        elif isinstance(space, gym.spaces.Discrete):
            self.obs_shape, self.one_hot, self.start = (), [int(space.n)], [int(space.start)]
        elif isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self.obs_shape, self.one_hot, self.start = tuple(space.shape), space.nvec.tolist(), space.start.tolist()
        else:
            raise ValueError(
                f"Observation space {space} is not supported: expected a Box, Discrete, 1-D MultiDiscrete, MultiBinary "
                "or Dict space (of those). Flatten it with gymnasium.wrappers.FlattenObservation."
            )
        if self.one_hot:
            self.out_features = sum(self.one_hot)
            self.register_buffer("offset", torch.tensor(self.start, dtype=torch.int64), persistent=False)
        self.normalize = normalize
        self.clip = clip
        self.register_buffer("mean", torch.zeros(self.out_features, dtype=torch.float64))
        self.register_buffer("var", torch.ones(self.out_features, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations (one batch dim first) → flat float features, without normalization."""
        if not self.one_hot:
            return obs.reshape(obs.shape[0], -1).float()
        index = obs.long().reshape(obs.shape[0], -1) - self.offset
        if len(self.one_hot) == 1:
            return F.one_hot(index.reshape(-1), self.one_hot[0]).float()
        return torch.cat([F.one_hot(index[:, i], n) for i, n in enumerate(self.one_hot)], -1).float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.encode(obs)
        if self.normalize:
            x = ((x - self.mean.float()) * torch.rsqrt(self.var.float() + 1e-8)).clamp(-self.clip, self.clip)
        return x

    @torch.no_grad()
    def update(self, obs: torch.Tensor, reduce: Reduce | None = None) -> None:
        """Merges the statistics of a batch of observations (any batch dims) into the running ones (when
        normalizing).

        Args:
            obs: observations ``[..., *obs_shape]``.
            reduce: a function summing a tensor across ranks (``trainer.strategy.reduce`` with
                ``reduce_op="sum"``), so every rank ends with the same statistics.
        """
        if not self.normalize:
            return
        x = self.encode(obs.reshape(-1, *self.obs_shape)).double()
        stats = torch.cat([x.sum(0), (x * x).sum(0), x.new_tensor([x.shape[0]])])
        if reduce is not None:
            stats = reduce(stats)
        n = self.out_features
        total, total_sq, count = stats[:n], stats[n : 2 * n], stats[-1]
        batch_mean = total / count
        batch_var = (total_sq / count - batch_mean**2).clamp_min(0.0)
        new_count = self.count + count
        delta = batch_mean - self.mean
        self.mean += delta * count / new_count
        self.var.copy_(
            (self.var * self.count + batch_var * count + delta**2 * self.count * count / new_count) / new_count
        )
        self.count.copy_(new_count)


class ImageEncoder(nn.Module):
    """A CNN over ``uint8`` images: pixels scaled to ``[0, 1]``, convolutions with ReLUs, then a linear layer with a
    ReLU (the Nature DQN network's torso by default, see :class:`CNNSpec`).

    Example:
        >>> encoder = ImageEncoder(gym.spaces.Box(0, 255, (36, 36, 3), np.uint8))
        >>> encoder(torch.zeros(2, 36, 36, 3, dtype=torch.uint8)).shape
        torch.Size([2, 512])
    """

    def __init__(self, space: gym.spaces.Box, cnn: CNNSpec | None = None) -> None:
        super().__init__()
        spec: CNNSpec = {**NATURE_CNN, **(cnn or {})}
        unknown = sorted(set(spec) - set(NATURE_CNN))
        if unknown:
            raise ValueError(f"cnn has unknown keys {unknown}; expected some of {sorted(NATURE_CNN)}.")
        channels, kernels, strides = spec["channels"], spec["kernel_sizes"], spec["strides"]
        if not (len(channels) == len(kernels) == len(strides) >= 1):
            raise ValueError(
                f"cnn has {len(channels)} channels, {len(kernels)} kernel_sizes and {len(strides)} strides: expected "
                "one of each per convolution, e.g. channels [32, 64, 64], kernel_sizes [8, 4, 3], strides [4, 2, 1]."
            )
        shape = tuple(space.shape)
        layout = spec["layout"]
        if layout not in ("auto", "channels_last", "channels_first"):
            raise ValueError(f"cnn layout={layout!r} is invalid: expected 'auto', 'channels_last' or 'channels_first'.")
        if len(shape) == 2:  # [H, W]: one channel
            self.channels_last, in_channels, height, width = False, 1, *shape
        else:
            self.channels_last = layout == "channels_last" or (layout == "auto" and shape[-1] < shape[0])
            in_channels, height, width = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        self.two_dims = len(shape) == 2
        probe = torch.zeros(1, in_channels, height, width)
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in zip(channels, kernels, strides, strict=True):
            conv = nn.Conv2d(in_channels, out_channels, kernel, stride)
            nn.init.orthogonal_(conv.weight, math.sqrt(2))
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # Conv2d(bias=True)
            layers += [conv, nn.ReLU()]
            in_channels = out_channels
        convolutions = nn.Sequential(*layers)
        with torch.no_grad():
            try:
                flat = convolutions(probe).numel()
            except RuntimeError as err:
                raise ValueError(
                    f"Images of shape {list(shape)} ({height}x{width}, "
                    f"{'channels last' if self.channels_last else 'channels first'}) are too small for the CNN's "
                    f"kernel_sizes {kernels} and strides {strides} ({err}). Resize the frames (e.g. "
                    "gymnasium.wrappers.ResizeObservation to 84x84; the Nature CNN needs at least 36x36), or give "
                    "smaller kernel_sizes/strides in cnn, or set cnn layout if the channels were taken for a side."
                ) from err
        self.out_features = spec["features"]
        self.network = nn.Sequential(
            *layers, nn.Flatten(), orthogonal_linear(flat, self.out_features, math.sqrt(2)), nn.ReLU()
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().div_(255.0) if obs.dtype == torch.uint8 else obs.float() / 255.0
        if self.two_dims:
            x = x.unsqueeze(1)
        elif self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.network(x)

    def update(self, obs: torch.Tensor, reduce: Reduce | None = None) -> None:
        """Nothing: images are scaled to ``[0, 1]``, never normalized with running statistics."""


class DictEncoder(nn.Module):
    """One encoder per key of a ``Dict`` space (nested ``Dict`` spaces get a ``DictEncoder`` of their own), the
    features concatenated in the space's key order.

    Example:
        >>> from tensordict import TensorDict
        >>> space = gym.spaces.Dict({"goal": gym.spaces.Discrete(3), "pos": gym.spaces.Box(-1, 1, (2,))})
        >>> encoder = DictEncoder(space)
        >>> obs = TensorDict({"goal": torch.tensor([2]), "pos": torch.tensor([[0.5, -0.5]])}, batch_size=[1])
        >>> encoder(obs).tolist()
        [[0.0, 0.0, 1.0, 0.5, -0.5]]
    """

    def __init__(self, space: gym.spaces.Dict, normalize: bool = False, cnn: CNNSpec | None = None) -> None:
        super().__init__()
        if not space.spaces:
            raise ValueError(f"Observation space {space} has no keys: give the Dict space at least one entry.")
        self.encoders = nn.ModuleDict(
            {key: make_encoder(sub, normalize and not is_image_space(sub), cnn) for key, sub in space.spaces.items()}
        )
        self.out_features: int = sum(self._encoder(key).out_features for key in self.encoders)

    def _encoder(self, key: str) -> Encoder:
        return self.encoders[key]  # type: ignore[return-value]  # every entry is made by make_encoder

    def forward(self, obs: TensorDictBase) -> torch.Tensor:
        return torch.cat([self._encoder(key)(obs.get(key)) for key in self.encoders], dim=-1)

    def update(self, obs: TensorDictBase, reduce: Reduce | None = None) -> None:
        """Updates the running statistics of every key that normalizes (not images)."""
        for key in self.encoders:
            self._encoder(key).update(obs.get(key), reduce)


Encoder = FlatEncoder | ImageEncoder | DictEncoder


def make_encoder(space: gym.Space, normalize: bool = False, cnn: CNNSpec | None = None) -> Encoder:
    """The encoder of an observation space: :class:`ImageEncoder` for images (see :func:`is_image_space`),
    :class:`DictEncoder` for ``Dict`` spaces, :class:`FlatEncoder` for the rest.

    Args:
        space: the observation space.
        normalize: normalize vector observations with running statistics (images never are; a ``Dict`` space's
            vector entries are).
        cnn: the CNN of image observations (:class:`CNNSpec`); ``None`` is the Nature DQN CNN.

    Raises:
        ValueError: for a space no encoder takes, or ``normalize`` on image observations alone, naming the fix.
    """
    if isinstance(space, gym.spaces.Dict):
        return DictEncoder(space, normalize, cnn)
    if is_image_space(space):
        assert isinstance(space, gym.spaces.Box)
        if normalize:
            raise ValueError(
                f"normalize_observations=True, but the observations are images ({space}): images are scaled to "
                "[0, 1], never normalized with running statistics. Set normalize_observations to false."
            )
        return ImageEncoder(space, cnn)
    return FlatEncoder(space, normalize)
