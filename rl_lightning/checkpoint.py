"""``RLCheckpointIO``: checkpoint files that are written atomically, loaded without unpickling code, checked
for damage, and keep large tensors (replay-buffer contents, under DDP each rank's in files of its own) in a
directory beside the ``.ckpt``.

Lightning's trainer uses it through its ``plugins`` (``make_trainer`` and the CLI add it by default); every
checkpoint Lightning writes or loads (``ModelCheckpoint``, ``trainer.save_checkpoint``, ``--ckpt_path``) and
every one ``ModelCheckpoint`` prunes (``save_top_k``) goes through it. ``RLModule.load_from_checkpoint`` checks
a file with it before Lightning's own loader reads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import struct
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

from rl_lightning.distributed import gathers

EXTERNAL = "rl_lightning.external"
"""Marks a tensor of the checkpoint stored in the directory beside it: ``{EXTERNAL: file, "dtype", "shape"}``."""
DATA_DIR = "rl_lightning.data_dir"
"""The checkpoint's entry naming the directory beside it (``<name>.data-<token>``), when it has one."""
STAGED = "rl_lightning.staged"
"""Marks a tensor that a DDP rank wrote to a file of its own while the checkpoint was built:
``{STAGED: absolute path, "rank", "dtype", "shape"}`` (see :func:`stage_tensors`). Rank zero's
:meth:`RLCheckpointIO.save_checkpoint` moves the file into the checkpoint's directory (``rank<r>/``) and writes an
:data:`EXTERNAL` reference in its place."""
STAGING_DIR = ".rl_lightning-staging"
"""The folder, in the checkpoint directory, where DDP ranks write their files before rank zero saves."""
INLINE = ("state_dict",)
"""Top-level entries always kept in the ``.ckpt`` file whatever their size: the model's weights, so that
Lightning's own loader (``load_from_checkpoint``) and ``torch.load`` find them there."""


class IncompleteCheckpointError(ValueError):
    """A checkpoint file (or a data file beside it) is truncated or damaged: cut short by a crash, a full disk or an
    interrupted copy, or changed since it was written."""


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
    - **Per-rank files under DDP**: each rank writes its replay buffer into files of its own while the
      checkpoint is built (:func:`staging_dir`, :func:`stage_tensors`); only small references cross the process
      group, and rank zero moves the files into ``<name>.data-<token>/rank<r>/`` when it saves. Each rank's files
      are memory-mapped on load, so a rank reads only the files of the buffer it takes.
    - **Weights in the file**: the model's ``state_dict`` always stays in the ``.ckpt``, so ``load_from_checkpoint``
      and ``torch.load`` read the weights from the file alone.
    - **Complete or refused**: a truncated or damaged file (or a data file of the wrong size) is refused as "not a
      complete rl_lightning checkpoint", naming the file; the CRC-32 that ``torch.save`` records for each member of
      the archive is checked before anything is unpickled.
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
        files: list[tuple[str, torch.Tensor | Path]] = []  # a tensor to write, or a file a rank staged to move
        stored = {
            key: value if key in INLINE else _externalize(value, self.external_bytes, files)
            for key, value in checkpoint.items()
        }
        staged = [content for _, content in files if isinstance(content, Path)]
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            if files:
                stored = {**stored, DATA_DIR: data_dir.name}
                data_dir.mkdir()
                directories = [data_dir]
                for name, content in files:
                    file = data_dir / name
                    if file.parent not in directories:
                        file.parent.mkdir()
                        directories.append(file.parent)
                    if isinstance(content, Path):
                        _move_staged(content, file)
                    else:
                        _write_raw(content, file)
                for directory in directories:
                    _fsync_dir(directory)
            with open(temporary, "wb") as f:
                _save_with_checksums(stored, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)  # atomic: readers see the old checkpoint or the new one
        except BaseException as err:
            temporary.unlink(missing_ok=True)
            shutil.rmtree(data_dir, ignore_errors=True)
            _remove_staging(staged)  # the other ranks' files of this save too: nothing of it is left
            if isinstance(err, OSError | RuntimeError):  # torch.save reports a failed write as a RuntimeError
                raise CheckpointWriteError(
                    f"Writing the checkpoint {str(path)!r} failed ({type(err).__name__}: {err}). Nothing half-written "
                    "is left, and the checkpoint that was there before (if any) is intact. If the disk is full, free "
                    "space or point ModelCheckpoint's dirpath at another disk, then resume with --ckpt_path last."
                ) from err
            raise
        _fsync_dir(path.parent)
        _remove_staging(staged)
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
        _check_archive(path)
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # The archive's checksums hold (checked above): this is what was written, not damage. Torch's message is
            # left out (`from None`): it suggests loading with weights_only=False, which would run the file's code.
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            held = f"a {found.group(1)} object" if found else "Python objects other than tensors and plain data"
            raise ValueError(
                f"Refusing to load checkpoint {str(path)!r}: it holds {held}, and loading it could run code from the "
                "file. rl_lightning only loads checkpoints with weights_only=True. Load a checkpoint written by "
                "rl_lightning; if you made this one yourself and trust it, convert it to plain tensors and data."
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, struct.error) as err:
            raise _incomplete(path, f"torch cannot read it ({type(err).__name__})") from None
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
        loaded = _internalize(checkpoint, directory, path)
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
                # Files DDP ranks staged for a save that a crash (kill -9) interrupted: no save is in flight yet.
                shutil.rmtree(Path(callback.dirpath) / STAGING_DIR, ignore_errors=True)


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Raises unless ``path`` is a complete checkpoint that loads with ``weights_only=True``: what
    :meth:`RLCheckpointIO.load_checkpoint` refuses (a truncated or damaged file, a missing or short data file
    beside it, pickled objects), with its messages. ``RLModule.load_from_checkpoint`` calls it first, since
    Lightning's own loader reads the file with plain ``torch.load``."""
    RLCheckpointIO().load_checkpoint(path)


def check_resumable(checkpoint: dict[str, Any], trainer: pl.Trainer | None, algorithm: str) -> None:
    """Raises when a fit is resumed from a weights-only checkpoint (``ModelCheckpoint(save_weights_only=True)``,
    the configs' ``best-*.ckpt``), which holds the weights and hyperparameters but no optimizer, replay-buffer or
    callback state: resuming from it would go on without them (Lightning itself would stop later, at the optimizer
    states, after restoring the counters). Evaluating it (``validate``/``test``) and loading it are fine."""
    if trainer is None or trainer.state.fn != "fit" or "optimizer_states" in checkpoint:
        return
    raise ValueError(
        f"The checkpoint {str(trainer.ckpt_path)!r} holds only the model's weights and hyperparameters (it was saved "
        "with ModelCheckpoint(save_weights_only=True), like the configs' best-*.ckpt), not the optimizer states, "
        "replay buffer and callback states a fit resumes from. Resume from the run's last.ckpt (--ckpt_path last); "
        "evaluate this checkpoint with `rl-lightning validate --ckpt_path ...` (or test), or load its policy with "
        f"rl_lightning.{algorithm}.load_from_checkpoint(path)."
    )


def staging_dir(trainer: pl.Trainer | None) -> Path | None:
    """A new directory where this DDP rank writes its own files for the checkpoint being built, or ``None`` where
    per-rank state is gathered whole into the checkpoint dict instead: one process, a checkpoint saved by one rank
    alone (Lightning's ``OnExceptionCheckpoint``), or a ``CheckpointIO`` other than :class:`RLCheckpointIO`.

    The directory is ``<dirpath>/.rl_lightning-staging/<token>-rank<r>``, ``dirpath`` that of the first
    ``ModelCheckpoint`` that saves more than weights (Lightning gives every rank the same), else
    ``trainer.default_root_dir``: on the filesystem of the checkpoints, so that rank zero moves the files into a
    checkpoint's directory by renaming them. With several nodes it must be a filesystem all nodes share.
    """
    if trainer is None or not gathers(trainer) or not isinstance(trainer.strategy.checkpoint_io, RLCheckpointIO):
        return None
    roots = [
        Path(cb.dirpath)
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None and not cb.save_weights_only
    ]
    root = roots[0] if roots else Path(trainer.default_root_dir)
    directory = root / STAGING_DIR / f"{uuid.uuid4().hex[:12]}-rank{trainer.global_rank}"
    directory.mkdir(parents=True)
    return directory


def stage_tensors(value: Any, directory: Path, rank: int) -> Any:
    """``value`` with each non-empty tensor written to a raw file in ``directory`` (flushed to disk) and replaced by
    a small :data:`STAGED` reference, which is what crosses the process group and what rank zero's
    :meth:`RLCheckpointIO.save_checkpoint` turns into a file of the checkpoint's directory."""

    def stage(leaf: Any) -> Any:
        if not (isinstance(leaf, torch.Tensor) and leaf.numel() > 0):
            return _DESCEND
        file = directory / f"{len(list(directory.iterdir()))}.bin"
        _write_raw(leaf, file)
        return {STAGED: str(file.resolve()), "rank": rank, "dtype": _dtype_name(leaf), "shape": list(leaf.shape)}

    return _map_tree(value, stage)


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


_DESCEND = object()
"""What a :func:`_map_tree` function returns for a value it leaves alone: the walk goes on into its items."""


def _map_tree(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to it and, where ``fn`` returns :data:`_DESCEND`, to the items of its dicts,
    lists and tuples (the structure of a checkpoint)."""
    replaced = fn(value)
    if replaced is not _DESCEND:
        return replaced
    if isinstance(value, dict):
        return {k: _map_tree(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_tree(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(_map_tree(v, fn) for v in value)
    return value


def _externalize(value: Any, threshold: int, files: list[tuple[str, torch.Tensor | Path]]) -> Any:
    """``value`` with each tensor of ``threshold`` bytes or more, and each file a rank staged, replaced by a reference
    (and added to ``files``)."""

    def reference(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor) and not leaf.is_sparse and leaf.numel() * leaf.element_size() >= threshold:
            name = f"{len(files)}.bin"
            files.append((name, leaf))
            return {EXTERNAL: name, "dtype": _dtype_name(leaf), "shape": list(leaf.shape)}
        if isinstance(leaf, dict) and STAGED in leaf:
            name = f"rank{int(leaf['rank'])}/{len(files)}.bin"
            files.append((name, Path(leaf[STAGED])))
            return {EXTERNAL: name, "dtype": leaf["dtype"], "shape": leaf["shape"]}
        return _DESCEND

    return _map_tree(value, reference)


def _internalize(value: Any, directory: Path, checkpoint: Path) -> Any:
    def read(leaf: Any) -> Any:
        if isinstance(leaf, dict) and EXTERNAL in leaf:
            return _read_raw(directory, str(leaf[EXTERNAL]), getattr(torch, leaf["dtype"]), leaf["shape"], checkpoint)
        return _DESCEND

    return _map_tree(value, read)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _save_with_checksums(stored: dict[str, Any], file: Any) -> None:
    """``torch.save`` with a CRC-32 recorded for each member of the archive (torch's default, unless turned off
    with ``torch.serialization.set_crc32_options(False)``): :func:`_check_archive` checks them on load."""
    crc32 = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        torch.save(stored, file)
    finally:
        torch.serialization.set_crc32_options(crc32)


def _check_archive(path: Path) -> None:
    """Raises :class:`IncompleteCheckpointError` unless ``path`` is a whole zip archive (what ``torch.save`` writes)
    whose members match their CRC-32s. A truncated file has no central directory at its end; damage inside it fails
    a checksum (or the archive's structure). An archive written without checksums (all zero) is only opened."""
    size = path.stat().st_size
    if size == 0:
        raise _incomplete(path, "the file is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            # torch's reader (miniz) takes a member whose attributes mark a directory for one, and reads no data.
            marked = [member.filename for member in members if member.is_dir() or member.external_attr & 0x10]
            if any(member.CRC for member in members) and not marked:
                for member in members:
                    with archive.open(member) as f:
                        while f.read(1 << 20):  # the CRC-32 is compared at the end of each member
                            pass
    except zipfile.BadZipFile as err:
        reason = str(err)
        if "not a zip file" in reason:
            raise _incomplete(path, f"its end is missing ({size} bytes and no zip directory at the end)") from None
        raise _incomplete(path, f"its contents are damaged ({reason})") from None
    except (
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        KeyError,
        NotImplementedError,
        RuntimeError,
        struct.error,
    ) as err:
        raise _incomplete(path, f"its zip structure is damaged ({type(err).__name__})") from None
    if marked:
        raise _incomplete(path, f"its zip directory is damaged (it marks {marked[0]!r} as a directory)")


def _incomplete(path: Path, reason: str) -> IncompleteCheckpointError:
    return IncompleteCheckpointError(
        f"{str(path)!r} is not a complete rl_lightning checkpoint: {reason}. It was cut short (a crash, a full disk, "
        "an interrupted copy) or damaged since it was written. Pass another checkpoint (an earlier version's "
        "last.ckpt, or a best-*.ckpt to evaluate), or copy this one again from where it was written, together with "
        "its '<name>.data-*' directory."
    )


def _move_staged(source: Path, target: Path) -> None:
    """Moves a file a rank staged into the checkpoint's directory: a rename on one filesystem, else a copy."""
    if not source.is_file():
        raise ValueError(
            f"A replay-buffer file that a DDP rank wrote for this checkpoint, {str(source)!r}, is not visible to rank "
            "zero, which writes the checkpoint. With several nodes, the checkpoint directory (ModelCheckpoint's "
            "dirpath, or trainer.default_root_dir) must be on a filesystem every node shares: point it there."
        )
    try:
        os.replace(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:  # another filesystem (a checkpoint saved outside the staging root)
            raise
        shutil.copyfile(source, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        source.unlink()


def _remove_staging(staged: list[Path]) -> None:
    """Removes the staging directories of ``staged`` and whatever else their staging folders hold (the files of
    saves that failed before rank zero saved), then the emptied folders. Only rank zero calls it, while saving:
    the other ranks have written all their files for this save, and none for another."""
    roots = {file.parent.parent for file in staged}
    for root in roots:
        for entry in root.iterdir() if root.is_dir() else []:
            shutil.rmtree(entry, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: a file this function could not remove
            root.rmdir()


def _write_raw(tensor: torch.Tensor, file: Path) -> None:
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    with open(file, "wb") as f:
        raw.numpy().tofile(f)
        f.flush()
        os.fsync(f.fileno())


def _read_raw(directory: Path, name: str, dtype: torch.dtype, shape: list[int], checkpoint: Path) -> torch.Tensor:
    file = directory / name
    if directory.resolve() not in file.resolve().parents:
        raise _incomplete(checkpoint, f"it names a data file outside its directory, {name!r}")
    count = 1
    for size in shape:
        count *= size
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    if not file.is_file():
        raise _incomplete(checkpoint, f"its data file {str(file)!r} is missing")
    if file.stat().st_size != nbytes:
        raise _incomplete(checkpoint, f"its data file {str(file)!r} holds {file.stat().st_size} bytes, not {nbytes}")
    # A private mapping: pages are read on first use and writes never reach the file.
    return torch.from_file(str(file), shared=False, size=nbytes, dtype=torch.uint8).view(dtype).reshape(shape)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
