"""`python -m orchestrator` is the same as the `failover` command."""

from orchestrator.cli import main

main()
