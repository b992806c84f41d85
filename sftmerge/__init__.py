"""sftmerge: multi-order SFT, parameter-selection merging and evaluation.

Kept free of heavy imports: `sftmerge._autoload` is imported at interpreter start-up.
"""

__version__ = "0.1.0"
