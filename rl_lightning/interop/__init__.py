"""Adapters that run other libraries' RL parts in rl_lightning's loop.

:mod:`rl_lightning.interop.torchrl_module`: a torchrl ``LossModule`` and its policy as an
:class:`~rl_lightning.RLModule` (needs the ``torchrl`` environment, see ``scripts/setup_torchrl.sh``).
"""
