"""``RLCheckpointIO``: checkpoint files that are written atomically, loaded without unpickling code, and keep
large tensors (replay-buffer contents) in a directory beside the ``.ckpt``.

Lightning's trainer uses it through its ``plugins`` (``make_trainer`` and the CLI add it by default); every
checkpoint Lightning writes or loads (``ModelCheckpoint``, ``trainer.save_checkpoint``, ``--ckpt_path``) and
every one ``ModelCheckpoint`` prunes (``save_top_k``) goes through it.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

EXTERNAL = "rl_lightning.external"
"""Marks a tensor of the checkpoint stored in the directory beside it: ``{EXTERNAL: file, "dtype", "shape"}``."""
DATA_DIR = "rl_lightning.data_dir"
"""The checkpoint's entry naming the directory beside it (``<name>.data-<token>``), when it has one."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, say); what was on disk before is left as it was."""


class RLCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint atomically and loads it with ``weights_only=True``.

    - **Atomic**: the ``.ckpt`` is written to a temporary file in the same directory, flushed to disk and
      renamed over the old one, so a crash at any moment leaves the previous checkpoint loadable and never a
      half-written file.
    - **Large tensors beside the file**: tensors of at least ``external_bytes`` (a replay buffer's contents)
      are written as raw files into a directory ``<name>.data-<token>`` next to ``<name>`` (a fresh token for
      each save, written before the ``.ckpt`` is renamed into place; the previous directory is removed only
      afterwards), and loaded back memory-mapped. ``remove_checkpoint`` (``ModelCheckpoint``'s ``save_top_k``
      pruning) removes the directory with the file.
    - **Trust**: loading never unpickles code. A checkpoint holding other objects is refused with a message
      that says what it held.

    Args:
        external_bytes: tensors this large or larger are stored beside the ``.ckpt`` (default 16 MiB).

    Example:
        >>> import tempfile
        >>> io = RLCheckpointIO(external_bytes=1024)
        >>> path = Path(tempfile.mkdtemp()) / "run.ckpt"
        >>> io.save_checkpoint({"big": torch.ones(1024), "small": torch.ones(2)}, path)
        >>> sorted(p.name.split("-")[0] for p in path.parent.iterdir())
        ['run.ckpt', 'run.ckpt.data']
        >>> io.load_checkpoint(path)["big"].sum().item()
        1024.0
    """

    def __init__(self, external_bytes: int = 16 * 2**20) -> None:
        if isinstance(external_bytes, bool) or not isinstance(external_bytes, int) or external_bytes < 1:
            raise ValueError(f"external_bytes={external_bytes!r} is invalid: expected an integer >= 1 (bytes).")
        self.external_bytes = external_bytes

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"RLCheckpointIO takes no storage_options, got {storage_options!r}.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        data_dir = path.with_name(f"{path.name}.data-{uuid.uuid4().hex[:12]}")
        files: list[tuple[str, torch.Tensor]] = []
        stored = _externalize(checkpoint, self.external_bytes, files)
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            if files:
                stored = {**stored, DATA_DIR: data_dir.name}
                data_dir.mkdir()
                for name, tensor in files:
                    _write_raw(tensor, data_dir / name)
                _fsync_dir(data_dir)
            with open(temporary, "wb") as f:
                torch.save(stored, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)  # atomic: readers see the old checkpoint or the new one
        except BaseException as err:
            temporary.unlink(missing_ok=True)
            shutil.rmtree(data_dir, ignore_errors=True)
            if isinstance(err, OSError | RuntimeError):  # torch.save reports a failed write as a RuntimeError
                raise CheckpointWriteError(
                    f"Writing the checkpoint {str(path)!r} failed ({type(err).__name__}: {err}). Nothing half-written "
                    "is left, and the checkpoint that was there before (if any) is intact. If the disk is full, free "
                    "space or point ModelCheckpoint's dirpath at another disk, then resume with --ckpt_path last."
                ) from err
            raise
        _fsync_dir(path.parent)
        for old in _data_dirs(path):
            if old != data_dir:
                shutil.rmtree(old, ignore_errors=True)

    @override
    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | torch.device | str | dict[str, str] | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Checkpoint {str(path)!r} does not exist or is not a file. Pass the path of a .ckpt file written "
                "by rl_lightning (e.g. runs/<name>/version_0/checkpoints/last.ckpt), or 'last' to resume from the "
                "last checkpoint of this run's ModelCheckpoint."
            )
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives
            raise ValueError(f"{str(path)!r} is not a readable checkpoint. Pass a .ckpt file written by rl_lightning.")
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            held = f"a {found.group(1)} object" if found else "Python objects other than tensors and plain data"
            raise ValueError(
                f"Refusing to load checkpoint {str(path)!r}: it holds {held}, and loading it could run code from the "
                "file. rl_lightning only loads checkpoints with weights_only=True. Load a checkpoint written by "
                "rl_lightning; if you made this one yourself and trust it, convert it to plain tensors and data."
            ) from err
        except (RuntimeError, EOFError) as err:
            raise ValueError(
                f"{str(path)!r} is not a readable checkpoint ({err}). Pass a .ckpt file written by rl_lightning."
            ) from err
        if not isinstance(checkpoint, dict):
            raise ValueError(f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
        data_dir = checkpoint.pop(DATA_DIR, None)
        if data_dir is None:
            return checkpoint
        directory = path.with_name(str(data_dir))
        if not directory.is_dir():
            raise FileNotFoundError(
                f"Checkpoint {str(path)!r} keeps its large tensors (replay-buffer contents) in {str(directory)!r}, "
                "which is missing. Copy or move checkpoints together with their '.data-*' directory."
            )
        loaded = _internalize(checkpoint, directory)
        assert isinstance(loaded, dict)
        return loaded

    @override
    def remove_checkpoint(self, path: Any) -> None:
        path = Path(path)
        path.unlink(missing_ok=True)
        for directory in _data_dirs(path):
            shutil.rmtree(directory, ignore_errors=True)


def use_rl_checkpoint_io(trainer: pl.Trainer) -> None:
    """Makes ``trainer`` write and load checkpoints through :class:`RLCheckpointIO`, unless the user configured
    another ``CheckpointIO`` plugin, and checks that every ``ModelCheckpoint`` can write its directory.
    ``RLModule.setup`` calls it, before Lightning restores a ``ckpt_path`` and before any training."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = RLCheckpointIO()
    if trainer.state.fn == "fit" and trainer.is_global_zero:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                _check_writable(Path(callback.dirpath))


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{uuid.uuid4().hex[:12]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"Checkpoints cannot be written to {str(directory)!r} ({err.strerror or err}). Choose a writable "
            "directory: ModelCheckpoint's dirpath, or the logger's save_dir (trainer.logger.init_args.save_dir) "
            "or trainer.default_root_dir it defaults to."
        ) from err


def find_last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The newest ``last.ckpt`` (or ``last-v<n>.ckpt``) of this experiment's earlier runs, or ``None``.

    ``ModelCheckpoint`` writes to its ``dirpath`` when one is given, else into the logger's run directory
    (``<save_dir>/<name>/<version>/checkpoints``; ``<default_root_dir>/<experiment id>/<run id>/checkpoints`` for a
    logger without a local directory such as MLflow with a database or server store), else into
    ``<default_root_dir>/checkpoints``. Each run gets a new version, where Lightning's own ``ckpt_path="last"``
    does not look; this looks in the directories of every version. The CLI resolves ``--ckpt_path last`` with it.
    """
    folders: list[Path] = []
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        folders += (Path(save_dir) / str(logger.name)).glob("*/checkpoints")
    else:
        folders.append(Path(trainer.default_root_dir) / "checkpoints")
    folders += [
        Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
    ]
    found = [p for folder in folders for p in folder.glob("*.ckpt") if re.fullmatch(r"last(-v\d+)?", p.stem)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _data_dirs(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.name) + r"\.data-[0-9a-f]{12}")
    return [p for p in path.parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]


def _remove_leftovers(path: Path) -> None:
    """Temporary files of saves to ``path`` that a crash interrupted, and data directories whose checkpoint is
    gone (removed by something other than :meth:`RLCheckpointIO.remove_checkpoint`, e.g. a ``last.ckpt`` that
    ``ModelCheckpoint(save_last="link")`` replaced by a link)."""
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        leftover.unlink(missing_ok=True)
    for directory in path.parent.glob("*.data-*"):
        base, _, token = directory.name.rpartition(".data-")
        if directory.is_dir() and re.fullmatch(r"[0-9a-f]{12}", token) and not (path.parent / base).is_file():
            shutil.rmtree(directory, ignore_errors=True)


def _externalize(value: Any, threshold: int, files: list[tuple[str, torch.Tensor]]) -> Any:
    """``value`` with each tensor of ``threshold`` bytes or more replaced by a reference (and added to ``files``)."""
    if isinstance(value, torch.Tensor) and not value.is_sparse and value.numel() * value.element_size() >= threshold:
        name = f"{len(files)}.bin"
        files.append((name, value))
        return {EXTERNAL: name, "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {k: _externalize(v, threshold, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_externalize(v, threshold, files) for v in value]
    if isinstance(value, tuple):
        return tuple(_externalize(v, threshold, files) for v in value)
    return value


def _internalize(value: Any, directory: Path) -> Any:
    if isinstance(value, dict):
        if EXTERNAL in value:
            return _read_raw(directory / str(value[EXTERNAL]), getattr(torch, value["dtype"]), value["shape"])
        return {k: _internalize(v, directory) for k, v in value.items()}
    if isinstance(value, list):
        return [_internalize(v, directory) for v in value]
    if isinstance(value, tuple):
        return tuple(_internalize(v, directory) for v in value)
    return value


def _write_raw(tensor: torch.Tensor, file: Path) -> None:
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    with open(file, "wb") as f:
        raw.numpy().tofile(f)
        f.flush()
        os.fsync(f.fileno())


def _read_raw(file: Path, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    count = 1
    for size in shape:
        count *= size
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    if not file.is_file() or file.stat().st_size != nbytes:
        raise ValueError(f"{str(file)!r} is missing or does not hold {nbytes} bytes: the checkpoint's data is damaged.")
    # A private mapping: pages are read on first use and writes never reach the file.
    return torch.from_file(str(file), shared=False, size=nbytes, dtype=torch.uint8).view(dtype).reshape(shape)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
