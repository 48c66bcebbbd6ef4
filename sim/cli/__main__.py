"""`python -m sim.cli`: the `margins` command."""

from sim.cli import main

main()
