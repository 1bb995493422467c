"""Giving memory back (trtc/memory.py): what is dropped or unmapped reads back the same."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.memory import drop_file_pages, unmap


def _file_tensor(tmp_path, array: np.ndarray) -> ir.ExternalTensor:
    array.tofile(tmp_path / "w.bin")
    return ir.ExternalTensor("w.bin", offset=0, length=array.nbytes, dtype=ir.DataType.FLOAT,
                             shape=ir.Shape(array.shape), name="w", base_dir=tmp_path)


def _resident_kb(path) -> int:
    """Resident kB of this process's maps of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_dropped_pages_of_a_weight_file_read_back_the_same(tmp_path):
    array = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)  # 1 MiB
    tensor = _file_tensor(tmp_path, array)
    assert float(tensor.numpy().sum()) == float(array.sum())  # every page read
    assert _resident_kb(tmp_path / "w.bin") >= 1000
    drop_file_pages([tensor, ir.tensor(array)])  # an in-memory tensor is left as it is
    assert _resident_kb(tmp_path / "w.bin") < 100
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_an_unmapped_weight_maps_again_when_read(tmp_path):
    array = np.arange(1024, dtype=np.float32)
    tensor = _file_tensor(tmp_path, array)
    tensor.numpy()
    unmap(tensor)
    assert tensor.raw is None and _resident_kb(tmp_path / "w.bin") == 0
    np.testing.assert_array_equal(tensor.numpy(), array)
