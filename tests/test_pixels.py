"""Image observations: the CNN encoder, its layouts and refusals, every algorithm training on pixels (which stay
uint8 in batches and replay buffers), the off-policy target encoder and detached actor features, and PPO and DQN
learning a task whose answer is only in the pixels (``rl_lightning.toy_envs:PixelTarget-v0``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

import rl_lightning
from rl_lightning import DQN, PPO, RLCallback, RLDataModule, RLModule, keys
from rl_lightning.encoders import ImageEncoder, is_image_space, make_encoder
from tests.conftest import quiet_trainer

PIXELS = "rl_lightning.toy_envs:PixelTarget-v0"
PIXELS_BOX = "rl_lightning.toy_envs:PixelTargetContinuous-v0"
SMALL_CNN = {"channels": [8, 8], "kernel_sizes": [8, 4], "strides": [4, 2], "features": 32}
OFF_POLICY = {"batch_size": 32, "buffer_size": 1000, "init_random_frames": 64, "hidden_sizes": [16], "cnn": SMALL_CNN}
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "A2C": (PIXELS, {"hidden_sizes": [16], "cnn": SMALL_CNN}),
    "PPO": (PIXELS, {"n_epochs": 2, "batch_size": 32, "hidden_sizes": [], "share_network": True, "cnn": SMALL_CNN}),
    "DQN": (PIXELS, {**OFF_POLICY, "target_update_interval": 4, "tau": 0.5}),  # soft: the target lags the CNN
    "SAC": (PIXELS_BOX, OFF_POLICY),
    "TD3": (PIXELS_BOX, OFF_POLICY),
    "DDPG": (PIXELS_BOX, OFF_POLICY),
}
IMAGE = gym.spaces.Box(0, 255, (36, 36, 3), np.uint8)


class ObservationDtypes(RLCallback):
    """Records the dtype of every batch's observations and of every minibatch's (replay samples included)."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.dtypes |= {batch[keys.OBSERVATION].dtype, batch[keys.NEXT_OBSERVATION].dtype}

    def on_process_optim_batch(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.dtypes.add(batch[keys.OBSERVATION].dtype)


def test_image_spaces_are_told_from_vectors_and_their_layout_detected() -> None:
    assert is_image_space(gym.spaces.Box(0, 255, (84, 84), np.uint8))
    assert not is_image_space(gym.spaces.Box(0, 1, (84, 84, 3), np.uint8))  # not pixel bounds
    assert not is_image_space(gym.spaces.Box(0, 255, (84, 84, 3), np.float32))
    assert make_encoder(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)).channels_last  # type: ignore[union-attr]
    assert not make_encoder(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)).channels_last  # type: ignore[union-attr]
    forced = make_encoder(gym.spaces.Box(0, 255, (40, 40, 40), np.uint8), cnn={"layout": "channels_last"})
    assert forced.channels_last  # type: ignore[union-attr]


def test_channels_last_channels_first_and_2d_images_give_the_same_features() -> None:
    """One image in each layout, through encoders with the same weights: the same features, scaled from [0, 255]."""
    torch.manual_seed(0)
    last = ImageEncoder(gym.spaces.Box(0, 255, (36, 40, 1), np.uint8))
    first = ImageEncoder(gym.spaces.Box(0, 255, (1, 36, 40), np.uint8))
    flat = ImageEncoder(gym.spaces.Box(0, 255, (36, 40), np.uint8))
    first.load_state_dict(last.state_dict())
    flat.load_state_dict(last.state_dict())
    image = torch.randint(0, 256, (3, 36, 40), dtype=torch.uint8)
    features = last(image.unsqueeze(-1))
    torch.testing.assert_close(first(image.unsqueeze(1)), features)
    torch.testing.assert_close(flat(image), features)
    scaled = last.network(image.unsqueeze(1).float() / 255.0)  # what the network sees: [0, 1] pixels, [B, C, H, W]
    torch.testing.assert_close(scaled, features)


@pytest.mark.parametrize(
    ("space", "cnn", "message"),
    [
        (gym.spaces.Box(0, 255, (20, 20, 3), np.uint8), None, r"Images of shape \[20, 20, 3\].*too small.*36x36"),
        (IMAGE, {"channels": [8], "kernel_sizes": [8, 4], "strides": [4]}, r"1 channels, 2 kernel_sizes and 1 strides"),
        (IMAGE, {"kernels": [3]}, r"cnn has unknown keys \['kernels'\]"),
        (IMAGE, {"layout": "nhwc"}, r"cnn layout='nhwc' is invalid"),
    ],
)
def test_bad_cnns_are_refused_naming_the_fix(space: gym.spaces.Box, cnn: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PPO(space, gym.spaces.Discrete(2), cnn=cnn)


def test_images_are_never_normalized_with_running_statistics() -> None:
    with pytest.raises(ValueError, match=r"normalize_observations=True, but the observations are images.*Set norm"):
        PPO(IMAGE, gym.spaces.Discrete(2), normalize_observations=True)
    # In a Dict space only the vector entries are normalized.
    space = gym.spaces.Dict({"image": IMAGE, "pos": gym.spaces.Box(-5.0, 5.0, (2,))})
    model = PPO(space, gym.spaces.Discrete(2), normalize_observations=True, cnn=SMALL_CNN)
    obs = TensorDict(
        {"image": torch.full((4, 36, 36, 3), 200, dtype=torch.uint8), "pos": torch.tensor([[1.0, 3.0]]).expand(4, 2)},
        batch_size=[4],
    )
    model.encoder.update(obs)
    pos = model.encoder.encoders["pos"]  # type: ignore[index]
    assert pos.count.item() == 4 and pos.mean.tolist() == [1.0, 3.0]
    assert not any(True for _ in model.encoder.encoders["image"].buffers())  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_trains_its_cnn_on_uint8_pixels(tmp_path: Path, name: str) -> None:
    """A short fit on images: observations stay uint8 in batches and replay samples, the CNN trains, off-policy
    target encoders follow the online one (soft updates), and a checkpoint reloads to the same policy."""
    env, options = ALGORITHMS[name]
    pl.seed_everything(0)
    data = RLDataModule(env, num_envs=2, frames_per_batch=32, total_frames=192, eval_episodes=2)
    model = getattr(rl_lightning, name)(data.observation_space, data.action_space, **options)
    conv = model.encoder.network[0]
    before = conv.weight.detach().clone()
    dtypes = ObservationDtypes()
    trainer = quiet_trainer(tmp_path, callbacks=[dtypes])
    trainer.fit(model, datamodule=data)
    assert model.updates > 0 and dtypes.dtypes == {torch.uint8}
    assert not torch.equal(conv.weight, before)  # the CNN trained
    if hasattr(model, "target_encoder"):
        target = model.target_encoder.network[0].weight
        assert not target.requires_grad and not torch.equal(target, before) and not torch.equal(target, conv.weight)
        assert model.replay_buffer.sample(4)[keys.NEXT_OBSERVATION].dtype == torch.uint8
    obs = torch.as_tensor(np.stack([data.observation_space.sample() for _ in range(3)]))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = type(model).load_from_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(
            reloaded.act(obs, deterministic=True)["action"], model.act(obs, deterministic=True)["action"]
        )


@pytest.mark.parametrize("name", ["SAC", "TD3"])
def test_the_actor_loss_does_not_train_the_shared_encoder(name: str) -> None:
    """Pixel SAC's rule: the critics train the encoder, the actor reads its features detached."""
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (36, 36, 1), np.uint8)
    options = {**OFF_POLICY, "policy_delay": 1} if name == "TD3" else OFF_POLICY  # the actor trains in this update
    model = getattr(rl_lightning, name)(space, gym.spaces.Box(-1.0, 1.0, (2,)), **options)
    actor = (
        list(model.actor.parameters())
        if name == "TD3"
        else [*model.actor_body.parameters(), *model.actor_head.parameters()]
    )
    batch = TensorDict(
        {
            keys.OBSERVATION: torch.randint(0, 256, (8, 36, 36, 1), dtype=torch.uint8),
            keys.ACTION: torch.rand(8, 2) * 2 - 1,
            keys.NEXT: {
                keys.OBSERVATION: torch.randint(0, 256, (8, 36, 36, 1), dtype=torch.uint8),
                keys.REWARD: torch.rand(8, 1),
                keys.TERMINATED: torch.zeros(8, 1, dtype=torch.bool),
                "discount": torch.full((8, 1), 0.99),
            },
        },
        batch_size=[8],
    )
    losses = model.loss(batch)
    losses["loss_actor"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)
    losses["loss_qvalue"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.learning
@pytest.mark.parametrize(
    ("cls", "arguments", "frames", "frames_per_batch"),
    [
        (PPO, {"lr": 1e-3, "n_epochs": 4, "hidden_sizes": [], "share_network": True, "entropy_coef": 0.01}, 2048, 256),
        (
            DQN,
            {
                "lr": 1e-3,
                "hidden_sizes": [],
                "buffer_size": 5000,
                "init_random_frames": 256,
                "target_update_interval": 50,
                "exploration_frames": 1000,
            },
            1536,
            64,
        ),
    ],
    ids=["PPO", "DQN"],
)
def test_learns_from_pixels_with_the_nature_cnn(
    tmp_path: Path, cls: type[RLModule], arguments: dict[str, Any], frames: int, frames_per_batch: int
) -> None:
    """The quadrant of a bright square names the action: a random policy scores 2 of 8, reading the pixels 8."""
    pl.seed_everything(0)
    data = RLDataModule(PIXELS, num_envs=8, frames_per_batch=frames_per_batch, total_frames=frames, eval_episodes=16)
    model = cls(data.observation_space, data.action_space, gamma=0.5, **arguments)  # type: ignore[call-arg]
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    assert trainer.callback_metrics["val/episode_return"] >= 7.5
