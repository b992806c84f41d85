"""Multi-order SFT (`sftmerge.train`)."""
