"""Evaluation (`sftmerge.eval`)."""
