"""``OptimizerHook``: a separate optimizer for chosen loss terms, as torchrl's hook."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from tensordict import TensorDict
from torch import nn
from typing_extensions import override

from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class OptimizerHook(RLCallback):
    """Steps its own optimizer with the sum of chosen ``loss_*`` terms; the module's optimizer gets the rest.

    At fit start the optimizer is built over the parameters of the module's sub-module named ``parameters``
    (e.g. ``"critic"``; a single ``nn.Parameter`` attribute such as ``"log_alpha"`` works too), or over all of
    the module's parameters. At ``on_optimizer`` the chosen terms are back-propagated (through
    ``module.backward_loss``: Lightning's ``manual_backward``, so DDP, precision and the backward hooks apply)
    and the losses are returned without them, so the module's own step handles only the remaining terms
    (and is skipped when none is left). The gradients of this optimizer's parameters are set aside until
    ``on_post_optim``, where its step runs (clipped to the module's ``max_grad_norm`` and through Lightning's
    precision plugin like the module's own): the module's optimizer never sees them, and the remaining terms'
    backward never meets parameters already changed in place.

    Porting torchrl code::

        OptimizerHook(optimizer, loss_components=["loss_critic"]).register(trainer)  # torchrl
        OptimizerHook(lambda p: torch.optim.SGD(p, lr=0.1), "critic", ["loss_critic"])  # rl_lightning

    Under DDP the two backward passes of a step touch different parameters: use
    ``strategy: ddp_find_unused_parameters_true`` (``DDPStrategy(find_unused_parameters=True)``); Lightning's
    error at the first backward says so otherwise. Both passes are all-reduced, so the ranks stay identical.

    Args:
        optimizer: builds the optimizer from the parameters; from YAML
            ``{class_path: torch.optim.SGD, init_args: {lr: 0.1}}``.
        parameters: the module's sub-module (dotted path, e.g. ``"critic"``) or parameter whose parameters
            this optimizer trains; ``None`` for all of the module's parameters.
        loss_components: the ``loss_*`` entries it minimizes (their sum); ``None`` for all of them.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable,
        parameters: str | None = None,
        loss_components: list[str] | None = None,
    ) -> None:
        if not callable(optimizer):
            raise ValueError(
                f"optimizer={optimizer!r} is not callable: pass a function of the parameters, e.g. "
                "lambda params: torch.optim.SGD(params, lr=0.1) (from YAML: class_path torch.optim.SGD)."
            )
        if loss_components is not None and not loss_components:
            raise ValueError("loss_components=[] is invalid: name at least one loss_* entry, or None for all of them.")
        self.optimizer_factory = optimizer
        self.parameters = parameters
        self.loss_components = None if loss_components is None else list(loss_components)
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []
        self._grads: list[torch.Tensor | None] | None = None
        self._checked = False
        self._pending_state: dict[str, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(parameters=self.parameters, loss_components=self.loss_components)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = [p for p in self._select_parameters(pl_module) if p.requires_grad]
        if not self._params:
            raise ValueError(
                f"OptimizerHook(parameters={self.parameters!r}) found no trainable parameters in the module. "
                "Name a sub-module with trainable parameters."
            )
        self.optimizer = self.optimizer_factory(self._params)
        self._checked = False
        if self._pending_state is not None:
            self.optimizer.load_state_dict(self._pending_state)
            self._pending_state = None

    def _select_parameters(self, module: pl.LightningModule) -> list[nn.Parameter]:
        if self.parameters is None:
            return list(module.parameters())
        try:
            return list(module.get_submodule(self.parameters).parameters())
        except AttributeError:
            pass
        try:
            return [module.get_parameter(self.parameters)]
        except AttributeError:
            names = ", ".join(name for name, _ in module.named_children())
            raise ValueError(
                f"OptimizerHook(parameters={self.parameters!r}): {type(module).__name__} has no such sub-module or "
                f"parameter. Its sub-modules: {names}. Use one of them (dotted for nested ones), or None for all."
            ) from None

    def _components(self, losses: TensorDict) -> list[str]:
        available = [k for k in losses.keys() if isinstance(k, str) and k.startswith("loss_")]
        if self.loss_components is None:
            return available
        if not self._checked:
            missing = [name for name in self.loss_components if name not in available]
            if missing:
                raise ValueError(
                    f"OptimizerHook(loss_components={self.loss_components}): {', '.join(missing)} not among the "
                    f"loss terms of the module, which are: {', '.join(available)}. Use some of those."
                )
            self._checked = True
        return self.loss_components

    @override
    def on_optimizer(self, trainer: pl.Trainer, module: RLModule, losses: TensorDict) -> TensorDict:
        assert self.optimizer is not None, "the optimizer is built at fit start"
        names = self._components(losses)
        self.optimizer.zero_grad(set_to_none=True)
        module.backward_loss(torch.stack([losses.get(name) for name in names]).sum())
        # Set the gradients aside: the module's step (zero_grad, backward, step) must not touch them.
        self._grads = [p.grad for p in self._params]
        for p in self._params:
            p.grad = None
        return losses.exclude(*names)

    @override
    def on_post_optim(self, trainer: pl.Trainer, module: RLModule) -> None:
        if self._grads is None or self.optimizer is None:
            return
        for p, grad in zip(self._params, self._grads, strict=True):
            p.grad = grad
        self._grads = None
        if getattr(module, "_direct_torch", False):
            # What Lightning's precision plugin would do here at full precision on one device: the module's
            # clipping hook, then the step (see RLModule._direct_torch).
            module.on_before_optimizer_step(self.optimizer)
            self.optimizer.step()
        else:
            trainer.strategy.optimizer_step(self.optimizer, closure=_no_closure)
        self.optimizer.zero_grad(set_to_none=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {"optimizer": self._pending_state}
        return {"optimizer": self.optimizer.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict["optimizer"]
        if self.optimizer is not None and state is not None:
            self.optimizer.load_state_dict(state)
        else:
            self._pending_state = state  # applied when the optimizer is built at fit start


def _no_closure() -> None:
    """The backward pass already ran in ``on_optimizer``."""
