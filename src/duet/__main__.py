"""`python -m duet` (and `torchrun -m duet`) run the CLI."""

from duet.cli import main

main()
