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
    from sftmerge.plugins import param_select

    param_select.register()
