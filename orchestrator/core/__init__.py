"""Core (layer 1): what every other layer shares and nothing in here depends on.

Config and its models, report and event models, durations, the error roots, the YAML source with line
numbers, logging, Prometheus metrics, HMAC signing, NATS subject names and small asyncio helpers.
May import: the standard library and third-party libraries only; never another `orchestrator` subpackage.
"""
