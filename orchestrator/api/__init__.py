"""API (layer 5): the HTTP server, its route table, the dashboard and the commands people send.

May import: layers 1-4; never `runtime` or `cli`.
"""
