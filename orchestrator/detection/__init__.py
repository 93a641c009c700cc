"""Detection (layer 3): from health reports to cluster state changes.

`machine` and its helpers are the pure state machine (`transition(state, input, now)`, no I/O, time is
an argument); `service` feeds it from the bus and publishes the transitions.
May import: `orchestrator.core`, `orchestrator.bus`.
"""
