"""Files and folders: atomic outputs, checkpoints on disk, the run-folder layout, model sources."""
