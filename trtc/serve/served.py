"""What a Python-backend model written by `trtc export triton` runs: one executor for the model's
version folder, and the batching Triton's dynamic batcher leaves to the model.

Triton hands a Python model the requests it gathered as a list; they are run as one batch
(concatenated along the batch dim, the outputs split back by rows), which is where batching
pays. Requests that cannot share a batch (other non-batch dims) run in groups of equal shapes,
and a failing group is rerun a request at a time so that each request gets its own answer.
Kept apart from model.py so that it is tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import TrtcError
from trtc.serve.check import MODEL_SPEC

Feeds = Mapping[str, np.ndarray]


class ServedModel:
    """The engine on a GPU when there is one, else the CPU reference of the same model."""

    def __init__(self, version_dir: str | Path):
        self.version_dir = Path(version_dir)
        self.spec = json.loads((self.version_dir / MODEL_SPEC).read_text())
        self.max_batch = int(self.spec["max_batch_size"])
        self.input_names = [t["name"] for t in self.spec["inputs"]]
        self.output_types = {t["name"]: np.dtype(t["dtype"]) for t in self.spec["outputs"]}
        self._engine = self._reference = None
        self.executor = self._open()

    def _open(self) -> str:
        engine, reference = self.spec.get("engine"), self.spec.get("reference")
        reason = "the model has no engine"
        if engine:
            from trtc.runtime.engine import no_gpu_reason

            reason = no_gpu_reason()
            if reason is None:
                from trtc.lower.backend import load_backend
                from trtc.runtime.engine import EngineRunner
                from trtc.runtime.sidecar import read_sidecar

                plan = self.version_dir / engine
                sidecar = read_sidecar(plan)
                self._engine = EngineRunner(plan, sidecar, load_backend(sidecar["backend"]))
                return f"{sidecar['backend']} engine on {self._engine.info.get('device', 'GPU')}"
        if not reference:
            raise TrtcError(f"cannot run the engine here ({reason}) and the model has no CPU reference",
                            where=str(self.version_dir),
                            hint="export it where the .trtir it was built from is on disk, or serve it on a GPU")
        from trtc.ir import load_artifact
        from trtc.reference.runner import ReferenceRunner

        # Between requests a served model waits: onnxruntime's spinning threads would take a core
        # from the server and the other instances meanwhile.
        self._reference = ReferenceRunner(load_artifact(self.version_dir / reference).model, spin=False)
        return f"CPU reference ({self._reference.backend})" + (f": {reason}" if engine else "")

    def _run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        if self._engine is not None:
            outputs = self._engine.run(dict(feeds))
        else:
            outputs = self._reference.run(feeds)
        return {name: np.asarray(outputs[name]).astype(dtype, copy=False) for name, dtype in self.output_types.items()}

    def run_requests(self, requests: Sequence[Feeds]) -> list[dict[str, np.ndarray] | TrtcError]:
        """Each request's outputs, or the error that request alone gets."""
        results: list[dict[str, np.ndarray] | TrtcError | None] = [None] * len(requests)
        for group in self._groups(requests):
            if len(group) == 1:
                results[group[0]] = self._run_one(requests[group[0]])
                continue
            try:
                batch = {name: np.concatenate([requests[i][name] for i in group]) for name in self.input_names}
                outputs = self._run(batch)
            except Exception:  # one bad request must not fail its neighbours: each is answered alone
                for i in group:
                    results[i] = self._run_one(requests[i])
                continue
            start = 0
            for i in group:
                rows = len(requests[i][self.input_names[0]])
                results[i] = {name: value[start:start + rows] for name, value in outputs.items()}
                start += rows
        return results

    def _run_one(self, feeds: Feeds) -> dict[str, np.ndarray] | TrtcError:
        try:
            return self._run(feeds)
        except TrtcError as exc:
            return exc
        except Exception as exc:  # the executors raise their own types; the client gets the words
            return TrtcError(f"{type(exc).__name__}: {exc}")

    def _groups(self, requests: Sequence[Feeds]) -> list[list[int]]:
        """Indices of the requests that can run as one batch: equal non-batch dims and dtypes."""
        if not self.max_batch:
            return [[i] for i in range(len(requests))]
        groups: dict[Any, list[int]] = {}
        for i, feeds in enumerate(requests):
            try:
                key = tuple((name, feeds[name].shape[1:], feeds[name].dtype) for name in self.input_names)
            except (KeyError, IndexError):  # validated by the executor when run alone
                key = ("alone", i)
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        if self._reference is not None:
            self._reference.close()
