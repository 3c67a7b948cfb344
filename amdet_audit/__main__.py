"""``python -m amdet_audit`` runs the CLI."""

from amdet_audit.cli import main

main()
