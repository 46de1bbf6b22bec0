"""``TorchRLModule``: a torchrl loss module and the policy it trains, run as an :class:`~rl_lightning.RLModule`.

torchrl's losses already read rl_lightning's batches: the collector writes torchrl's keys (``observation``,
``action``, ``action_log_prob``, ``("next", "reward")``, ``("next", "terminated")``, ...) with batch dims
``[num_envs, T]``, time last, as torchrl's value estimators expect. This module only adds what torchrl's
``Trainer`` would: the policy that collects, the advantage pass over each collected batch, the minibatches, the
optimizer and the target updates.

:class:`TorchRLBase` holds what this module and :class:`~rl_lightning.interop.torchrl_off_policy.TorchRLOffPolicyModule`
share; the argument checks they share are the functions at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase, set_interaction_type
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_int, check_positive
from rl_lightning.callbacks import TargetNetUpdaterHook
from rl_lightning.data import RLDataModule
from rl_lightning.encoders import Observation
from rl_lightning.interop import torchrl_missing
from rl_lightning.module import RLModule
from rl_lightning.spaces import SpaceLike, space_to_dict

try:
    from torchrl.objectives import LossModule, TargetNetUpdater
except ImportError as err:  # the core environment pins a tensordict that torchrl 0.14 does not accept
    raise torchrl_missing(__name__, err) from err

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""Builds the optimizer from the parameters, e.g. ``lambda params: torch.optim.Adam(params, lr=3e-4)``."""


class TorchRLBase(RLModule):
    """What the torchrl adapters (:class:`TorchRLModule`, ``TorchRLOffPolicyModule``) share: the loss module's output
    as scalar entries, the optimizer, the torchrl target updater stepped after each applied update, acting through a
    ``TensorDictModule`` policy, and the checkpoint's check of the loss class.

    A subclass calls :meth:`set_torchrl_parts` in its ``__init__`` and implements :meth:`act` (with
    :meth:`run_policy`) and the data side (``optim_batches``).
    """

    loss_module: LossModule
    target_net_updater: TargetNetUpdater | None
    """The torchrl target updater (the ``target_updater`` argument); ``None``: none."""
    optimizer_factory: OptimizerFactory | None
    lr: float

    def set_torchrl_parts(
        self,
        loss_module: LossModule,
        optimizer: OptimizerFactory | None,
        lr: float,
        target_updater: TargetNetUpdater | None,
    ) -> None:
        """Checks and keeps the torchrl loss, the optimizer factory (or Adam's ``lr``) and the target updater."""
        check_loss_module(loss_module)
        check_positive("lr", lr, "Use e.g. lr=3e-4.")
        check_target_updater(target_updater, loss_module)
        # Descriptions, not arguments: the leading underscore keeps load_from_checkpoint and `rl-lightning predict
        # --ckpt_path` (which pass the saved hyperparameters back to __init__) from passing them.
        self.hparams["_loss_class"] = qualified_name(loss_module)
        self.hparams["_target_update"] = None if target_updater is None else describe_updater(target_updater)
        self.loss_module = loss_module
        self.optimizer_factory = optimizer
        self.lr = lr
        self.target_net_updater = target_updater
        self._skipped_seen = 0  # skipped_updates at the last update seen by on_post_optim

    # -- the policy ------------------------------------------------------------------------------------

    def run_policy(self, policy: TensorDictModuleBase, observation: Observation, deterministic: bool) -> TensorDictBase:
        """``policy`` on a batch of observations (on this module's device), under torchrl's ``RANDOM`` interaction
        type (sampling; exploration modules such as ``AdditiveGaussianModule`` or ``EGreedyModule`` add their noise)
        or ``DETERMINISTIC`` (a distribution's mode or mean; exploration modules off). Raises if it writes no
        ``action``. A half-precision action or log-prob (the policy ran under ``bf16-mixed``'s autocast) comes back
        as float32."""
        observation = observation.to(self.device, non_blocking=True)
        batch = TensorDict({keys.OBSERVATION: observation}, batch_size=observation.shape[:1], device=self.device)
        mode = InteractionType.DETERMINISTIC if deterministic else InteractionType.RANDOM
        with set_interaction_type(mode):
            out: TensorDictBase = policy(batch)
        if out.get(keys.ACTION, None) is None:
            raise KeyError(
                f"The policy {type(policy).__name__} wrote {sorted(map(str, out.keys()))} but no 'action'. "
                "Give it out_keys=['action'] (a ProbabilisticActor writes 'action' by default)."
            )
        for key in (keys.ACTION, keys.ACTION_LOG_PROB):
            # Under mixed precision the collector's policy runs in autocast: the env and the buffers take float32.
            value = out.get(key, None)
            if value is not None and value.dtype in (torch.float16, torch.bfloat16):
                out.set(key, value.float())
        return out

    # -- training ---------------------------------------------------------------------------------------

    def loss(self, batch: TensorDict) -> TensorDict:
        """The loss module's output, with every entry a scalar: ``loss_*`` terms as they are, the diagnostics
        detached and averaged (ClipPPOLoss's ``explained_variance`` is ``[1]``, the loop stacks scalars). A bare
        ``loss`` entry (DQNLoss's only term) becomes ``loss_objective``: the loop sums the ``loss_*`` entries and
        logs their sum as ``train/loss`` itself."""
        out: TensorDictBase = self.loss_module(batch)
        entries: dict[str, torch.Tensor] = {}
        for key, value in out.items(include_nested=True, leaves_only=True):
            if not isinstance(value, torch.Tensor):
                continue
            name = key if isinstance(key, str) else "/".join(key)
            if name == "loss":
                name = "loss_objective"
            if name.startswith("loss_"):
                entries[name] = value if value.dim() == 0 else value.mean()
            else:
                entries[name] = value.detach().float().mean()
        return TensorDict(entries, batch_size=[])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over all parameters (the loss module's networks, SAC's ``log_alpha`` included): the
        ``optimizer`` factory's, or Adam with ``lr``."""
        if self.optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=self.lr, fused=True)  # rl_lightning's algorithms' Adam
        optimizer = self.optimizer_factory(self.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer returned a {type(optimizer).__name__}, not a torch.optim.Optimizer. Pass a function of the "
                "parameters, e.g. optimizer=lambda params: torch.optim.Adam(params, lr=3e-4)."
            )
        return optimizer

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._skipped_seen = self.skipped_updates  # after a checkpoint restored it

    def on_post_optim(self, trainer: pl.Trainer, pl_module: RLModule) -> None:
        """Steps the target updater after an applied update; one skipped for NaN or inf (``nonfinite="skip"``, counted
        in ``skipped_updates``) changed no weight and does not count. The loop calls this after the callbacks'
        ``on_post_optim``."""
        if self.target_net_updater is None:
            return
        if self.skipped_updates != self._skipped_seen:
            self._skipped_seen = self.skipped_updates
            return
        self.target_net_updater.step()

    # -- checkpoints ------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The target parameters are buffers of the loss module (in the state dict); HardUpdate's counter is not.
        if self.target_net_updater is not None:
            checkpoint["rl_lightning"]["target_updater"] = self.target_net_updater.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("_loss_class")
        ours = qualified_name(self.loss_module)
        if saved is not None and saved != ours:
            raise ValueError(
                f"This checkpoint was trained with the torchrl loss {saved}, but this model wraps {ours}. "
                f"Build the model with a {saved.rpartition('.')[2]} over the same networks to load it."
            )
        super().on_load_checkpoint(checkpoint)
        self._add_lazy_buffers(checkpoint.get("state_dict", {}))
        state = checkpoint["rl_lightning"].get("target_updater")
        if self.target_net_updater is not None and state is not None:
            self.target_net_updater.load_state_dict(state)

    def _add_lazy_buffers(self, saved: dict[str, Any]) -> None:
        """Adds what torchrl losses register at their first call to a loss built again, from the checkpoint's
        ``saved`` state dict, so that it loads strictly: the default value estimator (DQNLoss's TD(0) and its gamma)
        and the loss's own buffers (SACLoss's ``_target_entropy``)."""
        prefix = "loss_module."
        ours = self.loss_module.state_dict()
        missing = [name[len(prefix) :] for name in saved if name.startswith(prefix) and name[len(prefix) :] not in ours]
        if getattr(self.loss_module, "_value_estimator", ...) is None and any(
            name.startswith("_value_estimator.") for name in missing
        ):
            _ = self.loss_module.value_estimator  # builds the default estimator, as the first call would
        for name in missing:
            if "." in name or not isinstance(saved[prefix + name], torch.Tensor):
                continue
            if hasattr(self.loss_module, name) and name not in self.loss_module._buffers:
                delattr(self.loss_module, name)  # the placeholder the lazy buffer replaces (SAC's "auto")
            self.loss_module.register_buffer(name, saved[prefix + name].detach().clone())


class TorchRLModule(TorchRLBase):
    """Trains any torchrl ``LossModule`` in the RL loop, with the policy it trains collecting the data.

    Per collector batch: ``advantage`` (e.g. torchrl's ``GAE``, for on-policy losses) writes ``advantage``,
    ``value_target`` and ``state_value`` under ``torch.no_grad`` in :meth:`prepare_batch`; then ``n_epochs`` passes
    of shuffled minibatches of ``batch_size`` transitions each take one optimizer step on the sum of the loss
    module's ``loss_*`` entries. Its other entries are logged as ``train/<name>`` (averaged to a scalar).

    The networks are the loss module's (the policy shares its parameters), so checkpoints hold them and
    ``load_from_checkpoint`` needs the same modules built again:
    ``TorchRLModule.load_from_checkpoint(path, loss_module=..., policy=..., advantage=...)``. The target parameters
    of a loss with target networks (``DQNLoss``, ``IQLLoss``, ...) are buffers of the loss module, so checkpoints hold
    them too; ``target_updater`` moves them after each update, and its own state (``HardUpdate``'s counter) goes into
    the checkpoint with the counters.

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
        target_updater: torchrl's ``SoftUpdate(loss_module, tau=...)`` or ``HardUpdate(loss_module,
            value_network_update_interval=...)`` over the same loss module, stepped after every applied update (not
            after one skipped with ``nonfinite="skip"``); ``None``: the loss has no target networks.

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
        target_updater: TargetNetUpdater | None = None,
    ) -> None:
        super().__init__(observation_space, action_space)
        check_loss_module(loss_module)
        policy = policy_or_default(policy, loss_module, ("actor_network",))
        check_int("n_epochs", n_epochs, hint="It is the number of passes over each batch, e.g. n_epochs=10.")
        if batch_size is not None:
            check_int("batch_size", batch_size, hint="It is the transitions per update, e.g. 64, or null: all.")
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm, "Use null to disable it.")
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        # The modules are code, not hyperparameters: a checkpoint stores their weights, and loading builds them again.
        self.save_hyperparameters(ignore=[*TORCHRL_PARTS, "advantage"])
        self.hparams["observation_space"] = space_to_dict(self.observation_space)
        self.hparams["action_space"] = space_to_dict(self.action_space)
        self.set_torchrl_parts(loss_module, optimizer, lr, target_updater)
        self.policy = policy
        self.advantage = advantage
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
        out = self.run_policy(self.policy, observation, deterministic)
        actions = {keys.ACTION: out.get(keys.ACTION).cpu()}
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
            yield flat.clone()  # a view of the collector's inference tensors, which autograd cannot save
            return
        order = torch.randperm(flat.shape[0], device=flat.device)
        for indices in order.split(self.batch_size):
            yield flat[indices]


TORCHRL_PARTS = ("observation_space", "action_space", "loss_module", "policy", "optimizer", "target_updater")
"""Arguments of the torchrl adapters that are not hyperparameters: the spaces (saved as plain data) and the modules
(code: a checkpoint stores their weights, and loading builds them again)."""


def check_loss_module(loss_module: Any) -> None:
    """Raises ``TypeError`` unless ``loss_module`` is a torchrl ``LossModule``."""
    if not isinstance(loss_module, LossModule):
        raise TypeError(
            f"loss_module is a {type(loss_module).__name__}, not a torchrl LossModule. Pass a torchrl loss, "
            "e.g. torchrl.objectives.ClipPPOLoss(actor, critic) or SACLoss(actor, qvalue)."
        )


def policy_or_default(
    policy: TensorDictModuleBase | None, loss_module: LossModule, attributes: tuple[str, ...]
) -> TensorDictModuleBase:
    """``policy``, or else the first of the loss module's ``attributes`` (``actor_network``; DQN's
    ``value_network``, a ``QValueActor``) that is a module; raises if it has none."""
    if policy is not None:
        if not isinstance(policy, nn.Module):
            raise TypeError(
                f"policy is a {type(policy).__name__}, not a module. Pass a TensorDictModule that writes 'action' "
                "from 'observation' (e.g. a ProbabilisticActor), or None for the loss module's actor."
            )
        return policy
    for name in attributes:
        module = getattr(loss_module, name, None)
        if isinstance(module, TensorDictModuleBase):
            return module
    raise ValueError(
        f"{type(loss_module).__name__} has no {' or '.join(attributes)} to collect with. Pass the policy it trains "
        "as policy=..., a TensorDictModule that writes 'action' from 'observation'."
    )


def check_target_updater(target_updater: Any, loss_module: LossModule) -> None:
    """Raises unless ``target_updater`` is ``None`` or a torchrl ``TargetNetUpdater`` built over ``loss_module``."""
    if target_updater is None:
        return
    if not isinstance(target_updater, TargetNetUpdater):
        hint = (
            " TargetNetUpdaterHook moves the target_networks() pairs of rl_lightning's own algorithms; a torchrl "
            "loss keeps its targets as target_*_params buffers that only torchrl's updaters pair with their sources. "
            "TargetNetUpdaterHook(tau=t, interval=1) is SoftUpdate(loss_module, tau=t); TargetNetUpdaterHook(tau=1, "
            "interval=n) is HardUpdate(loss_module, value_network_update_interval=n - 1)."
            if isinstance(target_updater, TargetNetUpdaterHook)
            else ""
        )
        raise TypeError(
            f"target_updater is a {type(target_updater).__name__}, not a torchrl TargetNetUpdater. Pass "
            f"torchrl.objectives.SoftUpdate(loss_module, tau=0.005) or HardUpdate(loss_module, "
            f"value_network_update_interval=1000), built over the same loss module.{hint}"
        )
    if target_updater.loss_module is not loss_module:
        raise ValueError(
            f"target_updater {describe_updater(target_updater)} was built over another loss module "
            f"({type(target_updater.loss_module).__name__} at {id(target_updater.loss_module):#x}), so it would move "
            "targets this model never trains. Build it over the model's loss: "
            f"{type(target_updater).__name__}(loss_module, ...)."
        )


def describe_updater(updater: TargetNetUpdater) -> str:
    """``SoftUpdate(tau=0.005)`` or ``HardUpdate(value_network_update_interval=1000)``: what the hyperparameters and
    messages show of a target updater."""
    name = type(updater).__name__
    if hasattr(updater, "eps"):
        return f"{name}(tau={1 - float(updater.eps):.6g})"
    if hasattr(updater, "value_network_update_interval"):
        return f"{name}(value_network_update_interval={updater.value_network_update_interval})"
    return f"{name}()"


def qualified_name(obj: Any) -> str:
    """The module and name of ``obj``'s class, as checkpoints record the loss class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
