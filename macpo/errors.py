"""The one exception type that means "the user did something wrong".

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad path, bad config, malformed input, unknown round."""
