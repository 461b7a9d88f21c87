"""Jinja templates for dataset and model cards (rendered through huggingface_hub cards)."""
