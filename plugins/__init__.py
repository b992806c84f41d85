"""mergekit merge-method plugins (`sftmerge.plugins`)."""
