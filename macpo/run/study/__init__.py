"""``macpo study``: variants x seeds of a run config on the one executor, with a shared step cache.

- :mod:`.variants` the named variants (ablations, baselines) and their config overrides;
- :mod:`.runner`   every (variant, seed) as an ordinary run, side by side (``--jobs``);
- :mod:`.tables`   reading the runs: study.md, study.csv, bootstrap intervals, premise gates;
- :mod:`.plots`    the study's PNG plots;
- :mod:`.cli`      the command line.
"""
