"""The run layer: the only floor that imports the stages (docs/architecture.md).

- :mod:`.config`   a run config loaded, validated and resolved (sandbox models to their folders);
- :mod:`.plan`     a run's steps and their keys (pure: reads the config, never the disk);
- :mod:`.execute`  the one executor, with an optional shared step cache (:mod:`.cache`);
- :mod:`.procs`    a step as a subprocess, stopping it, the run folder's lock;
- :mod:`.commands` ``macpo run`` / ``macpo demo``; :mod:`.stages` ``macpo build`` / ``macpo eval``;
- :mod:`.study`    ``macpo study``: variants x seeds on the same executor;
- :mod:`.trainbatch` several trainer jobs in one process.
"""
