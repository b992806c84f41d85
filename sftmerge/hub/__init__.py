"""Sharing on the Hugging Face Hub: model cards, uploads, shared recipes."""
