"""Actuators: the only code that changes the world (balancers, workloads)."""
