"""The experiment harness: Hydra configs, datasets, tasks, topologies and the Flower apps.

Everything here sits on top of the library (``cifer_flwr.crypto``, ``protocol``, ``mods``,
``strategies``) and is never imported by it (docs/design.md §3).
"""
