"""Runtime (layer 6): wiring. The daemon builds every long-lived object in one place; also the
stand-alone prober, the desired-state reconciler and the read-only dry-run of a playbook.

May import: layers 1-5; never `cli`.
"""
