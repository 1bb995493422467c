"""Converters by op family, one module each; every module here is imported so that its
`@converter` registrations take effect (adding a family = adding a file)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
