"""Trainer stage: one agent, one round dataset, TRL + PEFT."""
