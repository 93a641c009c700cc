"""`python -m orchestrator` is the same as the `failover` command."""

from orchestrator.cli.main import main

main()
