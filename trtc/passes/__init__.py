"""Optimizer passes, one per module in this package, each registered with
`@register_pass(name, order=...)` (the order table is in `registry.py`).

Every module here other than the infrastructure is imported, so adding a pass is
adding a file.
"""

import importlib
import pkgutil

from trtc.passes.registry import PASSES, PassContext, PassInfo, register_pass

_INFRASTRUCTURE = {"registry", "pipeline", "rewrite"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PASSES", "PassContext", "PassInfo", "register_pass"]
