"""``TorchRLModule``: a torchrl loss module and the policy it trains, run as an :class:`~rl_lightning.RLModule`.

torchrl's losses already read rl_lightning's batches: the collector writes torchrl's keys (``observation``,
``action``, ``action_log_prob``, ``("next", "reward")``, ``("next", "terminated")``, ...) with batch dims
``[num_envs, T]``, time last, as torchrl's value estimators expect. This module only adds what torchrl's
``Trainer`` would: the policy that collects, the advantage pass over each collected batch, the minibatches and the
optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase, set_interaction_type
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_int, check_positive
from rl_lightning.data import RLDataModule
from rl_lightning.encoders import Observation
from rl_lightning.module import RLModule
from rl_lightning.spaces import SpaceLike, space_to_dict

try:
    from torchrl.objectives import LossModule
except ImportError as err:  # the core environment pins a tensordict that torchrl 0.14 does not accept
    raise ImportError(
        f"rl_lightning.interop.torchrl_module needs torchrl, which cannot be imported here ({err}). Install it in "
        "its own environment: bash scripts/setup_torchrl.sh (torchrl 0.14 needs tensordict<0.15, the core pins "
        "0.15), then run with .venv-torchrl/bin/python."
    ) from err

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""Builds the optimizer from the parameters, e.g. ``lambda params: torch.optim.Adam(params, lr=3e-4)``."""


class TorchRLModule(RLModule):
    """Trains any torchrl ``LossModule`` in the RL loop, with the policy it trains collecting the data.

    Per collector batch: ``advantage`` (e.g. torchrl's ``GAE``, for on-policy losses) writes ``advantage``,
    ``value_target`` and ``state_value`` under ``torch.no_grad`` in :meth:`prepare_batch`; then ``n_epochs`` passes
    of shuffled minibatches of ``batch_size`` transitions each take one optimizer step on the sum of the loss
    module's ``loss_*`` entries. Its other entries are logged as ``train/<name>`` (averaged to a scalar).

    The networks are the loss module's (the policy shares its parameters), so checkpoints hold them and
    ``load_from_checkpoint`` needs the same modules built again:
    ``TorchRLModule.load_from_checkpoint(path, loss_module=..., policy=..., advantage=...)``.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        loss_module: the torchrl loss, e.g. ``ClipPPOLoss(actor, critic)``.
        policy: the module that maps ``observation`` to ``action`` (and, for on-policy losses, ``action_log_prob``):
            a ``ProbabilisticActor`` or any ``TensorDictModule``. ``None``: the loss module's ``actor_network``.
            Its deterministic action (``InteractionType.DETERMINISTIC``: a categorical's mode, a Gaussian's mean)
            is the one evaluated and exported.
        advantage: a torchrl value estimator run on each collected batch (``GAE(gamma=..., lmbda=...,
            value_network=critic)``); ``None`` for losses that compute their own targets.
        optimizer: builds the optimizer from the parameters; ``None``: Adam with ``lr``.
        lr: Adam's learning rate when ``optimizer`` is ``None``.
        n_epochs: passes over each collector batch.
        batch_size: transitions per optimizer step; must divide a batch's transitions. ``None``: the whole batch.
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping).
        nonfinite: an update with NaN or inf gradients stops the run (``"raise"``) or is skipped (``"skip"``).

    Example:
        >>> import gymnasium as gym
        >>> from tensordict.nn import TensorDictModule
        >>> from torch.distributions import Categorical
        >>> from torchrl.modules import ProbabilisticActor, ValueOperator
        >>> from torchrl.objectives import ClipPPOLoss
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(nn.Linear(4, 2), ["observation"], ["logits"]),
        ...     in_keys=["logits"], distribution_class=Categorical, return_log_prob=True,
        ... )
        >>> critic = ValueOperator(nn.Linear(4, 1), in_keys=["observation"])
        >>> model = TorchRLModule(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), ClipPPOLoss(actor, critic))
        >>> sorted(model.act(torch.zeros(3, 4)))
        ['action', 'action_log_prob']
    """

    def __init__(
        self,
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        loss_module: LossModule,
        policy: TensorDictModuleBase | None = None,
        advantage: nn.Module | None = None,
        optimizer: OptimizerFactory | None = None,
        lr: float = 3e-4,
        n_epochs: int = 1,
        batch_size: int | None = None,
        max_grad_norm: float | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(observation_space, action_space)
        if not isinstance(loss_module, LossModule):
            raise TypeError(
                f"loss_module is a {type(loss_module).__name__}, not a torchrl LossModule. Pass a torchrl loss, "
                "e.g. torchrl.objectives.ClipPPOLoss(actor, critic)."
            )
        if policy is None:
            policy = getattr(loss_module, "actor_network", None)
            if not isinstance(policy, nn.Module):
                raise ValueError(
                    f"{type(loss_module).__name__} has no actor_network to collect with. Pass the policy it trains "
                    "as policy=..., a TensorDictModule that writes 'action' from 'observation'."
                )
        check_positive("lr", lr, "Use e.g. lr=3e-4.")
        check_int("n_epochs", n_epochs, hint="It is the number of passes over each batch, e.g. n_epochs=10.")
        if batch_size is not None:
            check_int("batch_size", batch_size, hint="It is the transitions per update, e.g. 64, or null: all.")
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm, "Use null to disable it.")
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        # The modules are code, not hyperparameters: a checkpoint stores their weights, and loading builds them again.
        self.save_hyperparameters(
            ignore=["observation_space", "action_space", "loss_module", "policy", "advantage", "optimizer"]
        )
        self.hparams["observation_space"] = space_to_dict(self.observation_space)
        self.hparams["action_space"] = space_to_dict(self.action_space)
        self.hparams["loss_class"] = _qualified_name(loss_module)
        self.loss_module = loss_module
        self.policy = policy
        self.advantage = advantage
        self.optimizer_factory = optimizer
        self.lr = lr
        self.optim_epochs = n_epochs
        self.batch_size = batch_size
        self.max_grad_norm = max_grad_norm
        self.nonfinite = nonfinite

    def check_data(self, data: RLDataModule) -> None:
        super().check_data(data)
        transitions = data.num_envs * data.steps_per_batch
        if self.batch_size is not None and transitions % self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} does not split a batch of {transitions} transitions "
                f"(frames_per_batch={data.frames_per_batch} with frame_skip={data.frame_skip}) into equal "
                "minibatches. Choose a batch_size that divides it, or change frames_per_batch."
            )

    @property
    def gamma(self) -> float | None:
        """The discount of ``advantage`` (torchrl's estimators keep it as ``gamma``), what hook classes that need the
        model's discount read (``RewardNormalizer``); ``None`` without one."""
        gamma = getattr(self.advantage, "gamma", None)
        return None if gamma is None else float(gamma)

    # -- the policy ------------------------------------------------------------------------------------

    def act(self, observation: Observation, deterministic: bool = False) -> dict[str, torch.Tensor]:
        observation = observation.to(self.device, non_blocking=True)
        batch = TensorDict({keys.OBSERVATION: observation}, batch_size=observation.shape[:1], device=self.device)
        mode = InteractionType.DETERMINISTIC if deterministic else InteractionType.RANDOM
        with set_interaction_type(mode):
            out = self.policy(batch)
        action = out.get(keys.ACTION, None)
        if action is None:
            raise KeyError(
                f"The policy {type(self.policy).__name__} wrote {sorted(map(str, out.keys()))} but no 'action'. "
                "Give it out_keys=['action'] (a ProbabilisticActor writes 'action' by default)."
            )
        actions = {keys.ACTION: action.cpu()}
        log_prob = out.get(keys.ACTION_LOG_PROB, None)
        if log_prob is not None and not deterministic:
            actions[keys.ACTION_LOG_PROB] = log_prob.cpu()
        return actions

    # -- training ---------------------------------------------------------------------------------------

    def prepare_batch(self, batch: TensorDict) -> TensorDict:
        """Runs ``advantage`` (e.g. ``GAE``) over the batch ``[num_envs, T]``, without gradients."""
        if self.advantage is not None:
            with torch.no_grad():
                batch = self.advantage(batch)
        return batch

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        flat = batch.reshape(-1)
        if self.batch_size is None:
            yield flat
            return
        order = torch.randperm(flat.shape[0], device=flat.device)
        for indices in order.split(self.batch_size):
            yield flat[indices]

    def loss(self, batch: TensorDict) -> TensorDict:
        """The loss module's output, with every entry a scalar: ``loss_*`` terms as they are, the diagnostics
        detached and averaged (ClipPPOLoss's ``explained_variance`` is ``[1]``, the loop stacks scalars)."""
        out: TensorDictBase = self.loss_module(batch)
        entries: dict[str, torch.Tensor] = {}
        for key, value in out.items(include_nested=True, leaves_only=True):
            if not isinstance(value, torch.Tensor):
                continue
            name = key if isinstance(key, str) else "/".join(key)
            if name.startswith("loss_"):
                entries[name] = value if value.dim() == 0 else value.mean()
            else:
                entries[name] = value.detach().float().mean()
        return TensorDict(entries, batch_size=[])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        optimizer = self.optimizer_factory(self.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer returned a {type(optimizer).__name__}, not a torch.optim.Optimizer. Pass a function of the "
                "parameters, e.g. optimizer=lambda params: torch.optim.Adam(params, lr=3e-4)."
            )
        return optimizer

    # -- checkpoints ------------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("loss_class")
        ours = _qualified_name(self.loss_module)
        if saved is not None and saved != ours:
            raise ValueError(
                f"This checkpoint was trained with the torchrl loss {saved}, but this model wraps {ours}. "
                f"Build the model with a {saved.rpartition('.')[2]} over the same networks to load it."
            )
        super().on_load_checkpoint(checkpoint)


def _qualified_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
