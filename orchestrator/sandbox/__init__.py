"""Sandbox (layer 4): real local stand-ins (HAProxy, HTTP apps, a Kubernetes API subset) for the demo
and the tests.

May import: layers 1-3 (it reuses the HAProxy runtime-API client); never the daemon (`runtime`), which
`cli.demo` wires to these stand-ins.
"""
