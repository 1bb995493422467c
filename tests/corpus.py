"""The test corpus: ../shared/models (with .npz references) and the light_* models of
the installed onnx package (expected outputs beside them). Missing data skips, loudly."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "models"
NODE_TESTS = SHARED / "onnx-node-tests"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@dataclasses.dataclass
class CorpusModel:
    name: str
    path: Path

    def reference(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(inputs, expected outputs) keyed by ONNX names."""
        proto = onnx.load(str(self.path), load_external_data=False)
        inits = {i.name for i in proto.graph.initializer}
        in_names = [i.name for i in proto.graph.input if i.name not in inits]
        out_names = [o.name for o in proto.graph.output]
        if self.path.parent == LIGHT:
            # onnx's backend runner feeds arange(n)/n to the light models.
            inputs = {}
            for vi in proto.graph.input:
                if vi.name in inits:
                    continue
                shape = tuple(d.dim_value or 1 for d in vi.type.tensor_type.shape.dim)
                n = int(np.prod(shape))
                inputs[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
            stem = str(self.path.with_suffix(""))
            outputs = {name: numpy_helper.to_array(onnx.load_tensor(f"{stem}_output_{i}.pb"))
                       for i, name in enumerate(out_names)}
            return inputs, outputs
        with np.load(self.path.with_suffix(".npz")) as data:
            return {n: data[n] for n in in_names}, {n: data[n] for n in out_names}


def shared_models() -> list[CorpusModel]:
    if not MODELS.is_dir():
        return []
    return [CorpusModel(p.stem, p) for p in sorted(MODELS.glob("*.onnx"))]


def light_models() -> list[CorpusModel]:
    return [CorpusModel(p.stem, p) for p in sorted(LIGHT.glob("light_*.onnx"))]


def corpus_params() -> list:
    """pytest params for every corpus model; a visible skip when ../shared/models is absent."""
    params = [pytest.param(m, id=m.name) for m in shared_models() + light_models()]
    if not MODELS.is_dir():
        params.append(pytest.param(None, id="shared-models-missing", marks=pytest.mark.skip(
            reason=f"../shared/models is missing (looked in {MODELS}): corpus model tests not run")))
    return params


def assert_close_to_reference(outputs: dict, expected: dict, what: str) -> None:
    """max abs error <= 1e-4 x max(1, |reference|max), per output."""
    for name, want in expected.items():
        got = np.asarray(outputs[name])
        assert got.shape == want.shape, f"{what}: {name} shape {got.shape} != {want.shape}"
        bound = 1e-4 * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
        err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if want.size else 0.0
        assert err <= bound, f"{what}: {name} max abs error {err:.3g} > {bound:.3g}"


def run_trtc(*args: str, cwd: Path | None = None):
    """Run the CLI in a subprocess; returns CompletedProcess with text output."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "trtc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def trtc_in_process(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (a subprocess start-up would dominate): (exit code, stdout, stderr)."""
    from trtc.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def one_error_line(result: tuple[int, str, str], *needles: str, code: int = 2) -> str:
    """One `trtc: error:` line, exit `code`, holding every needle; no traceback anywhere."""
    rc, out, err = result
    assert rc == code, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtc: error: "), err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
