"""Eval stage: the gold-reward sandbox, judges, win rates and reports."""
