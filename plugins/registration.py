"""Register sftmerge's merge methods in mergekit's registry (idempotent)."""

from __future__ import annotations

import sys

_MODULE = "sftmerge.plugins.param_select"


def register_all() -> None:
    module = sys.modules.get(_MODULE)
    if module is not None and not hasattr(module, "param_select_merge"):
        # The method module is mid-import (it imported mergekit, which ran the
        # start-up hook); it calls register_all itself once it is complete.
        return
    from mergekit import merge_methods

    from sftmerge.plugins.param_select import param_select_merge

    known = {m.spec.name for m in merge_methods.registered_methods()}
    for method in (param_select_merge,):
        if method.spec.name not in known:
            merge_methods.register(method)
