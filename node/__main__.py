"""`python -m node ...`: start one node (the same command as `pdfleet node`)."""

from node.cli import main

main()
