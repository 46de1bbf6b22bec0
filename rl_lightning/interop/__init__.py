"""Adapters that run other libraries' RL parts in rl_lightning's loop.

:mod:`rl_lightning.interop.torchrl_module`: a torchrl ``LossModule`` and its policy as an
:class:`~rl_lightning.RLModule`, trained on each collected batch (on-policy losses with their advantage module, or
any loss with a torchrl target updater); :class:`~rl_lightning.interop.torchrl_module.TorchRLBase` is what the
torchrl adapters share.

:mod:`rl_lightning.interop.torchrl_off_policy`: a torchrl off-policy loss (``SACLoss``, ``TD3Loss``, ``DQNLoss``, ...)
trained on replay samples, on the off-policy base's replay buffer or a torchrl ``ReplayBuffer``.

:mod:`rl_lightning.interop.torchrl_data`: a torchrl collector (``Collector``, ``MultiSyncCollector``) or env as the
data (``TorchRLDataModule``), with :class:`~rl_lightning.callbacks.UpdateWeights` for collectors whose workers hold a
copy of the policy.

All three need the ``torchrl`` environment (see ``scripts/setup_torchrl.sh``).
"""


def torchrl_missing(module: str, err: ImportError) -> ImportError:
    """The error an interop module raises where torchrl cannot be imported, naming the environment that has it."""
    return ImportError(
        f"{module} needs torchrl, which cannot be imported here ({err}). Install it in its own environment: "
        "bash scripts/setup_torchrl.sh (torchrl 0.14 needs tensordict<0.15, the core pins 0.15), then run with "
        ".venv-torchrl/bin/python."
    )
