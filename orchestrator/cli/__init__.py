"""CLI (layer 7): the `failover` command, `failover ctl` (an HTTP client of the API) and `failover demo`.

May import: everything below.
"""
