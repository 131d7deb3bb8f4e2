"""rgm_ray: resampling generative models with likelihood-free importance weights, on Ray.

Import direction: a module imports only earlier layers, or its own layer without a cycle
(written as ``rgm_ray.layers.LAYERS``; ``python -m rgm_ray.layers`` prints the import graph,
``--modules`` the module-level edges, ``--check`` the violations; ``tests/test_import_layers.py`` enforces it):

1. core: ``seeding``, ``configs``, ``results``, ``runtime``, ``tracking``, ``progress``, ``layers``
2. ``data``
3. ``store`` (the sample-set format: the contract between stages)
4. ``viz``
5. ``models`` (generator registry, networks, training)
6. ``generate``
7. ``weigh``
8. ``resample``
9. ``evaluate``
10. ``ssl``
11. ``tune``
12. ``report``
13. ``pipeline`` (presets, the stage table, the runner)
14. ``cli``, and ``bench`` beside it
15. ``pipelines/`` (thin Ray-job entrypoints, outside this package)

Each stage package exposes one typed entry point (a spec dataclass in, a ``results.StageResult``
out) and an ``is_complete`` check; the CLI and the pipeline both call those.
"""

__version__ = "0.1.0"
