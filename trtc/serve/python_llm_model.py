"""Triton Python-backend model for an LLM decoder, written by `trtc export triton` (model.py).

A decoupled model: each request gets one response per generated token, sent as soon as the token
is chosen, the last one with Triton's final flag (TRITONSERVER_RESPONSE_COMPLETE_FINAL); a request it cannot
serve gets one error response, final too. What it runs is trtc.serve.served_llm (trtc's
generation loop on the decoder beside this file, which trtc.json names). Requests are served one
at a time per instance (config `instance_group { count }` runs more at once). `trtc serve`
starts Triton with TRTC_SITE_PACKAGES naming the environment trtc is installed in; the stub's
own environment (numpy<2, which the stub needs) stays first on sys.path.
"""

import json
import os
import site

for _site_dir in filter(None, os.environ.get("TRTC_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  (the stub provides it)


class TritonPythonModel:
    """Triton's entry points: initialize, execute (requests answered through their senders), finalize."""

    def initialize(self, args):
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise pb_utils.TritonModelException(
                "this model streams a response per token: its config needs model_transaction_policy { decoupled: "
                "true } (`trtc export triton` writes it)")
        try:
            from trtc.serve.served_llm import ServedLlm
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"trtc is not importable in Triton's Python environment ({exc}); serve this repository with "
                "`trtc serve`, or set TRTC_SITE_PACKAGES to the site-packages trtc is installed in") from None
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.model = ServedLlm(version_dir)
        pb_utils.Logger.log_info(f"{args['model_name']}: generates on the {self.model.executor}")

    def execute(self, requests):
        for request in requests:
            _Answer(request.get_response_sender()).serve(self.model, request)
        return None

    def finalize(self):
        self.model.close()


class _Answer:
    """One request's responses; its final flag is sent exactly once, whatever happens."""

    def __init__(self, sender):
        self.sender = sender
        self.done = False

    def serve(self, model, request):
        try:
            inputs = {}
            for name in model.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                inputs[name] = None if tensor is None else tensor.as_numpy()
            model.run(model.parse(inputs), self.send, getattr(self.sender, "is_cancelled", None))
        except Exception as exc:  # the client gets the words (trtc's errors are one line)
            if not self.done:
                error = pb_utils.TritonError(str(exc) or type(exc).__name__)
                self.sender.send(pb_utils.InferenceResponse(error=error), flags=_final())
                self.done = True

    def send(self, piece):
        """A Piece of trtc.serve.served_llm as a response (its outputs; the final flag on the last)."""
        if not piece.ids and piece.text is None and piece.finish_reason is None:  # cancelled: the flag alone
            self.sender.send(flags=_final())
            self.done = True
            return
        tensors = [pb_utils.Tensor("output_ids", np.asarray(piece.ids, dtype=np.int64))]
        if piece.text is not None:
            tensors.append(pb_utils.Tensor("text_output", np.array([piece.text.encode("utf-8")], dtype=np.object_)))
        if piece.finish_reason is not None:
            tensors.append(pb_utils.Tensor("finish_reason", np.array([piece.finish_reason.encode()], dtype=np.object_)))
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=_final() if piece.final else 0)
        self.done = piece.final


def _final():
    """Triton's final-response flag (TRITONSERVER_RESPONSE_COMPLETE_FINAL, 1 in its C API)."""
    return getattr(pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL", 1)
