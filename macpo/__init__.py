"""macpo: weak-to-strong alignment on round-versioned preference data."""

__version__ = "0.1.0"
