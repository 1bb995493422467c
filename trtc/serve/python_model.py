"""Triton Python-backend model written by `trtc export triton --backend python` (model.py).

It runs the trtc artifact beside it (trtc.json says which) through trtc.serve.served: the
engine on a GPU when one is there, the CPU reference otherwise. `trtc serve` starts Triton with
TRTC_SITE_PACKAGES naming the environment trtc is installed in; the stub's own environment
(numpy<2, which the stub needs) stays first on sys.path.
"""

import os
import site

for _site_dir in filter(None, os.environ.get("TRTC_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import triton_python_backend_utils as pb_utils  # noqa: E402  (the stub provides it)


class TritonPythonModel:
    """Triton's entry points: initialize, execute (a list of requests), finalize."""

    def initialize(self, args):
        try:
            from trtc.serve.served import ServedModel
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"trtc is not importable in Triton's Python environment ({exc}); serve this repository with "
                "`trtc serve`, or set TRTC_SITE_PACKAGES to the site-packages trtc is installed in") from None
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.model = ServedModel(version_dir)
        pb_utils.Logger.log_info(f"{args['model_name']}: runs on the {self.model.executor}")

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                  for name in self.model.input_names} for request in requests]
        responses = []
        for result in self.model.run_requests(feeds):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result))))
            else:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, value) for name, value in result.items()]))
        return responses

    def finalize(self):
        self.model.close()
