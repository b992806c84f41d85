"""Register sftmerge's merge methods the moment mergekit's method registry loads.

Imported at interpreter start-up by `sftmerge-autoload.pth`, so it must stay cheap:
no torch, no mergekit. It puts a one-shot finder on `sys.meta_path` that wraps the
loader of `mergekit.merge_methods`; after that module has executed, the finder
registers the plugins and removes itself.
"""

from __future__ import annotations

import importlib.abc
import sys

_TARGET = "mergekit.merge_methods"


class _RegisterAfterLoad(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        from sftmerge.plugins.registration import register_all

        register_all()


class _MergekitWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisterAfterLoad(spec.loader)
                return spec
        return None


def install() -> None:
    """Idempotent: register now if mergekit is already loaded, else watch for it."""
    if _TARGET in sys.modules:
        from sftmerge.plugins.registration import register_all

        register_all()
        return
    if not any(isinstance(f, _MergekitWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _MergekitWatcher())


install()
