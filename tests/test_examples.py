"""Every example script runs on a tiny budget."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.py") if p.name != "deploy_onnx.py" and not p.name.startswith("torchrl_")
)
"""The training examples; deploy_onnx.py runs an exported policy without torch (tests/test_inference.py), the
torchrl_*.py ones need torchrl's environment and run in tests/test_torchrl_port.py."""


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As `python examples/<script> --total-frames=512 --root=<tmp_path>` from the repository root runs it, but in
    # this process: a new interpreter would spend most of the test importing torch and Lightning again.
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(script), "--total-frames=512", f"--root={tmp_path}"])
    runpy.run_path(str(script), run_name="__main__")
    assert list(tmp_path.rglob("*.ckpt")) or list(tmp_path.rglob("metrics.csv")) or list(tmp_path.rglob("events*"))
