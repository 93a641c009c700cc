"""Notifiers (layer 2): how humans hear about what happened (webhook, Slack, ...).

May import: `orchestrator.core`.
"""

from orchestrator.notifiers.base import Notification, Notifier, build_notifier

__all__ = ["Notification", "Notifier", "build_notifier"]
