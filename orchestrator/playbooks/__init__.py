"""Playbooks (layer 4): the YAML format (DESIGN §7), templates, validation, the action registry and runs.

May import: layers 1-3 (`core`, `bus`, `kube`, `notifiers`, `actuators`, ...); never `api`, `runtime`, `cli`.
"""
