"""``python -m cifer_flwr.cli`` runs the ``cifer`` command."""

from cifer_flwr.cli import main

main()
