"""mergekit's global random seed for `sftmerge merge`: always set, recorded, and kept to the merge.

mergekit's randomised methods (DARE's drop masks in `dare_ties`, `dare_linear`, ...) draw
from the global random state, which mergekit seeds only when `--random-seed` is given:
without it two merges of one recipe differ. `param_select` draws from its own seed.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Optional

from sftmerge.errors import SftmergeError

# The seed when neither the recipe nor --random-seed gives one.
DEFAULT_RANDOM_SEED = 0


def random_seed(recipe_parameters: dict, given: Optional[int]) -> int:
    """The recipe's `parameters.seed` where the method has one, else --random-seed, else the default."""
    own = recipe_parameters.get("seed")
    if isinstance(own, int) and not isinstance(own, bool):
        if given is not None and given != own:
            raise SftmergeError(f"the recipe sets parameters.seed {own} but --random-seed is {given}: give one seed")
        return own
    return DEFAULT_RANDOM_SEED if given is None else given


@contextlib.contextmanager
def caller_random_state_kept() -> Iterator[None]:
    """mergekit reseeds random, numpy and torch globally; put the caller's states back afterwards,
    so a pipeline that merges in-process (PAFT) draws the same numbers after a merge as before."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
