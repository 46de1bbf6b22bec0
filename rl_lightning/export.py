"""A trained policy as a file that runs without rl_lightning: ONNX (onnxruntime) or TorchScript (``torch.jit.load``).

The exported program is the module's :meth:`~rl_lightning.RLModule.forward`: a batch of raw observations
``[batch, *obs_shape]`` (any batch size) in, the deterministic env actions out, with observation normalization, the
action scaling and clipping to a ``Box``'s bounds included. Its input is named ``observation`` (the observation
space's dtype), its output ``action``.

rl-lightning export --ckpt_path runs/ppo_cartpole/version_0/checkpoints/last.ckpt --output policy.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from rl_lightning import algorithms
from rl_lightning._checks import require_packages
from rl_lightning.checkpoint import verify_checkpoint
from rl_lightning.module import RLModule

EXPORT_FORMATS = {".onnx": "ONNX, for onnxruntime (the onnx extra)", ".pt": "TorchScript, for torch.jit.load"}
"""The file suffixes :func:`export_policy` writes, and what each is."""
ONNX_EXTRA = "pip install 'rl-lightning[onnx]'"


def check_export_path(path: str | os.PathLike[str]) -> Path:
    """The path, if its suffix names a format :func:`export_policy` writes.

    Raises:
        ValueError: for another suffix, naming the formats.
    """
    path = Path(path)
    if path.suffix not in EXPORT_FORMATS:
        formats = "; ".join(f"{suffix}: {what}" for suffix, what in EXPORT_FORMATS.items())
        raise ValueError(
            f"Cannot export to {str(path)!r}: its suffix {path.suffix or '(none)'!r} names no format this exports. "
            f"Supported: {formats}. Name the output e.g. policy.onnx or policy.pt."
        )
    return path


def export_policy(module: RLModule, path: str | os.PathLike[str]) -> Path:
    """Writes the module's deterministic policy (:meth:`~rl_lightning.RLModule.forward`) to ``path``: ONNX for
    ``.onnx``, TorchScript for ``.pt``, with a dynamic batch size. The file appears whole or not at all.

    Args:
        module: a trained module, e.g. ``PPO.load_from_checkpoint(path)``; it is exported on its device, in eval mode.
        path: the file to write; its suffix picks the format (:data:`EXPORT_FORMATS`).

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown suffix, or a ``Dict`` observation space (the exported program takes one tensor);
            nothing is written.
        ModuleNotFoundError: for ``.onnx`` without ``onnx`` and ``onnxscript`` (the ``onnx`` extra).

    Example::

        model = PPO.load_from_checkpoint("last.ckpt", map_location="cpu")
        export_policy(model, "policy.onnx")
        session = onnxruntime.InferenceSession("policy.onnx")
        action = session.run(None, {"observation": observation[None]})[0][0]
    """
    path = check_export_path(path)
    if isinstance(module.observation_space, gym.spaces.Dict):
        raise ValueError(
            f"{type(module).__name__}'s observation space is a Dict space ({module.observation_space}); the exported "
            "program takes one tensor. Export a policy of Box, Discrete, MultiDiscrete or MultiBinary observations "
            "(e.g. add gymnasium.wrappers.FlattenObservation), or run this one with model.predict."
        )
    if path.suffix == ".onnx":
        require_packages(("onnx", "onnxscript"), "Exporting to ONNX", ONNX_EXTRA, "export TorchScript (a .pt output)")
    space = module.observation_space
    dtype = torch.from_numpy(np.empty(0, dtype=space.dtype)).dtype
    samples = np.stack([space.sample() for _ in range(2)])  # a batch of 2: 0 and 1 are specialized by torch.export
    example = torch.as_tensor(samples, dtype=dtype, device=module.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _eval_mode(module), torch.no_grad(), _atomic(path) as partial:
        if path.suffix == ".pt":
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript (and Lightning 2.7 to_torchscript) in favour of torch.export, but
                # torch.jit.load still runs the files; the probing of every attribute touches torchmetrics' deprecated
                # properties of the module's episode statistics.
                warnings.filterwarnings("ignore", message=".*to_torchscript.*deprecated.*")
                warnings.filterwarnings("ignore", message=".*torch\\.jit\\..* is deprecated.*")
                warnings.filterwarnings("ignore", message=".*This property will be removed in 2.0.0.*")
                traced = module.to_torchscript(method="trace", example_inputs=example)
                torch.jit.save(traced, str(partial))
        else:
            _export_onnx(module, example, partial)
    return path


def _export_onnx(module: RLModule, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    with warnings.catch_warnings(), contextlib.ExitStack() as restore:
        restore.callback(registration.setLevel, level)
        warnings.simplefilter("ignore")  # torch.export's notes on the traced LightningModule's attributes
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["observation"],
            output_names=["action"],
            dynamic_shapes={"observation": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )


@contextlib.contextmanager
def _eval_mode(module: RLModule) -> Iterator[None]:
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, moved onto it when the block succeeds and removed when it fails."""
    # Named, not made by mkstemp: the exporter creates it with the permissions any new file gets (mkstemp's are 0600).
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_checkpoint_module(ckpt_path: str | os.PathLike[str]) -> RLModule:
    """The module of an rl_lightning checkpoint, on the CPU (also one saved on a GPU), its class read from the file.

    Raises:
        ValueError: for a file rl_lightning did not write, naming it.
    """
    verify_checkpoint(ckpt_path)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    cls = checkpoint_model_class(checkpoint, ckpt_path)
    return cls.load_from_checkpoint(Path(ckpt_path), map_location="cpu")


def checkpoint_model_class(checkpoint: dict[str, Any], ckpt_path: str | os.PathLike[str]) -> type[RLModule]:
    """The model class of a loaded checkpoint: the algorithm it names (``rl_lightning.PPO``...), or the import path
    the CLI saved (``_class_path``) for a subclass of one.

    Raises:
        ValueError: for a checkpoint rl_lightning did not write.
    """
    state = checkpoint.get("rl_lightning")
    if not isinstance(state, dict) or "algorithm" not in state:
        raise ValueError(
            f"{str(ckpt_path)!r} was not written by rl_lightning (it has no 'rl_lightning' entry): expected a "
            "checkpoint of rl-lightning fit (or of a Trainer fitting an rl_lightning model)."
        )
    algorithm = str(state["algorithm"])
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if class_path and class_path.rpartition(".")[2] == algorithm:
        module_name, _, name = class_path.rpartition(".")
        found = getattr(importlib.import_module(module_name), name)
    elif algorithm in algorithms.__all__:
        found = getattr(algorithms, algorithm)
    else:
        raise ValueError(
            f"{str(ckpt_path)!r} holds a {algorithm} model, which is not a built-in algorithm and whose import path "
            "was not saved (it was not trained with rl-lightning fit). Load it in Python with "
            f"{algorithm}.load_from_checkpoint and call rl_lightning.export.export_policy."
        )
    if not (isinstance(found, type) and issubclass(found, RLModule)):
        raise ValueError(f"{str(ckpt_path)!r} names the model class {class_path}, which is not an RLModule.")
    return found


def main(argv: list[str] | None = None) -> None:
    """``rl-lightning export --ckpt_path CKPT --output policy.onnx`` (or ``policy.pt``)."""
    parser = argparse.ArgumentParser(
        prog="rl-lightning export",
        description="Export a checkpoint's deterministic policy: raw observations in, env actions out, any batch size.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by rl-lightning fit")
    parser.add_argument(
        "--output", required=True, help="the file to write: .onnx (onnxruntime) or .pt (TorchScript, torch.jit.load)"
    )
    args = parser.parse_args(argv)
    output = check_export_path(args.output)  # before the checkpoint is read: a refusal writes nothing
    module = load_checkpoint_module(args.ckpt_path)
    export_policy(module, output)
    rank_zero_info(f"Wrote {type(module).__name__}'s policy to {output}.")
