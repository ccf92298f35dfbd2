"""Bytewax dataflows: wiring only. Domain logic lives in ``state``; I/O in ``connectors``.

Step ids are stable strings: bytewax recovery keys state by them, so never rename one casually.
"""
