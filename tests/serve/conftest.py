"""The Triton server environment the serving tests start servers from."""

from __future__ import annotations

import pytest

from trtc.serve.environment import TritonUnavailable, triton_install


@pytest.fixture(scope="session")
def triton():
    """Triton's environment, installed once (skipped where PyPI cannot be reached)."""
    try:
        return triton_install(progress=print)
    except TritonUnavailable as exc:
        pytest.skip(f"no Triton server to run: {exc}")
