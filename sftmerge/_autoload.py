"""Adjust mergekit the moment its modules load, in any program (the stock CLIs included).

Imported at interpreter start-up by `sftmerge-autoload.pth`, so it must stay cheap:
no torch, no mergekit. It puts a finder on `sys.meta_path` that wraps the loaders of
the modules in `_HOOKS`; right after such a module has executed, its hook runs:
- `mergekit.merge_methods`: register sftmerge's merge methods (mergekit 0.1.5 has no
  plugin discovery);
- `mergekit.card`: treat existing local model folders as local (see plugins/compat.py).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

_HOOKS = {
    "mergekit.merge_methods": "sftmerge.plugins.registration:register_all",
    "mergekit.card": "sftmerge.plugins.compat:prefer_local_model_paths",
}


def _run_hook(module_name: str) -> None:
    target, attribute = _HOOKS[module_name].split(":")
    getattr(importlib.import_module(target), attribute)()


class _RunHookAfterLoad(importlib.abc.Loader):
    def __init__(self, inner, module_name: str):
        self._inner = inner
        self._module_name = module_name

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _run_hook(self._module_name)


class _MergekitWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RunHookAfterLoad(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Idempotent: run the hooks of modules already loaded, watch for the others."""
    for module_name in _HOOKS:
        if module_name in sys.modules:
            _run_hook(module_name)
    if not any(isinstance(f, _MergekitWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _MergekitWatcher())


install()
