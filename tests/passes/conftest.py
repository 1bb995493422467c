import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus import SHARED  # noqa: E402

MAKE_BIG_MODEL = SHARED / "tools" / "make_big_model.py"


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory):
    """A 2-layer LLaMA-style decoder (GQA, rotary, RMSNorm) from ../shared/tools/make_big_model.py."""
    if not MAKE_BIG_MODEL.is_file():
        pytest.skip(f"{MAKE_BIG_MODEL} is missing")
    path = tmp_path_factory.mktemp("llama") / "model.onnx"
    subprocess.run([sys.executable, str(MAKE_BIG_MODEL), "--out", str(path), "--layers", "2", "--hidden", "64",
                    "--heads", "4", "--kv-heads", "2", "--ffn", "160", "--vocab", "500", "--seq-len", "64"],
                   check=True, capture_output=True)
    return path
