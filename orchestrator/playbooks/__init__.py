"""Playbooks: the YAML format (DESIGN §7), templates, validation, the action registry and runs."""
