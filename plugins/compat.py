"""Compatibility fixes for mergekit 0.1.5, applied by the start-up hook.

mergekit's model card code asks the Hugging Face Hub whether an existing local folder
with a one-slash relative path (such as `models/smollm2-135m-instruct`) is also a Hub
repository. Offline, that request fails the whole merge after every tensor has been
written, leaving a half-finished output folder. An existing local folder is treated
as local instead; paths that do not exist locally are still looked up as before.
"""

from __future__ import annotations

import os


def prefer_local_model_paths() -> None:
    import mergekit.card as card

    if getattr(card.is_hf, "__sftmerge__", False):
        return
    original = card.is_hf

    def is_hf(path: str) -> bool:
        if os.path.isdir(os.path.expanduser(path)):
            return False
        return original(path)

    is_hf.__sftmerge__ = True
    is_hf.__doc__ = original.__doc__
    card.is_hf = is_hf
