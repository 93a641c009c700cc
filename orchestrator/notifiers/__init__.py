"""Notifiers: how humans hear about what happened (webhook, Slack)."""

from orchestrator.notifiers.base import Notification, Notifier, build_notifier

__all__ = ["Notification", "Notifier", "build_notifier"]
