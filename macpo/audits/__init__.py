"""Named SQL audits; each ``*.sql`` file here is one audit (see macpo/audit.py)."""
