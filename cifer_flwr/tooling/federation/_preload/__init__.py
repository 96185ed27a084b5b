"""A ``sitecustomize`` for the processes of a simulation (see :mod:`.sitecustomize`).

Its directory goes first on ``PYTHONPATH`` of a simulation SuperLink
(:func:`cifer_flwr.tooling.federation.simulation.simulation_env`), so Python imports the
``sitecustomize`` module found here at start-up in every process below it.
"""
