"""The `sftmerge` command line: one group, one module per command family."""
