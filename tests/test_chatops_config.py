"""The `chatops:` section (secrets from the environment, IDs never names) and the chat grammar, which must
give `Commands` exactly what `failover ctl` gives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api.chatops import render
from orchestrator.api.chatops.grammar import Parsed, UsageError, parse
from orchestrator.api.chatops.verify import Unverified, sign_context, verify_context
from orchestrator.core.config import load_config
from tests.test_config import GOOD, problems, write

SECTION = """chatops:
  slack:
    signing_secret: "${SLACK_SIGNING_SECRET}"
    bot_token: "${SLACK_BOT_TOKEN}"
    users: {U0123ABC: {role: operator, actor: bob}, U0456DEF: {role: admin, actor: alice}, W0789GHI: viewer}
    channels: [C0123ABC]
  mattermost:
    token: "${MM_TOKEN}"
    action_secret: "${MM_ACTION_SECRET}"
    users: {abcdefghijklmnopqrstuvwxyz: {role: operator, actor: bob}}
    channels: ["*"]
"""
ENV = {
    "HOOK_SECRET": "s3cret",
    "SLACK_SIGNING_SECRET": "sign-me",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "MM_TOKEN": "mm",
    "MM_ACTION_SECRET": "act",
}


def test_chatops_section_loads_with_secrets_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + SECTION), env=ENV)
    slack = config.chatops.slack
    assert slack is not None and slack.signing_secret.get_secret_value() == "sign-me"
    assert slack.users["U0123ABC"].role == "operator" and slack.users["U0123ABC"].actor == "bob"
    assert slack.users["W0789GHI"].role == "viewer" and slack.users["W0789GHI"].actor is None
    assert slack.users["U0456DEF"].actor == "alice" and slack.api_url == "https://slack.com/api"
    assert "sign-me" not in repr(config) and "xoxb-1" not in repr(config)
    assert config.chatops.mattermost is not None and config.chatops.mattermost.channels == ["*"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("U0123ABC: {role: operator, actor: bob}", "is not a Slack user ID"),
        ("channels: [C0123ABC]", "is not a Slack channel ID"),
        ("U0123ABC: {role: operator, actor: bob}", "Input should be 'viewer', 'operator' or 'admin'"),
        ('signing_secret: "${SLACK_SIGNING_SECRET}"', "empty"),
    ],
)
def test_bad_chatops_sections_are_refused_with_the_reason(tmp_path: Path, change: str, expected: str) -> None:
    replacement = {
        "is not a Slack user ID": "alice: {role: operator, actor: alice}",
        "is not a Slack channel ID": "channels: ['#ops']",
        "Input should be 'viewer', 'operator' or 'admin'": "U0123ABC: root",
        "empty": 'signing_secret: ""',
    }[expected]
    text = GOOD + SECTION.replace(change, replacement, 1)
    found = problems(write(tmp_path, text), ENV)
    assert any(expected in p and "chatops" in p for p in found), found


def test_grammar_is_failover_ctls() -> None:
    assert parse("") == Parsed("help")
    assert parse("status") == Parsed("status")
    assert parse("runs --limit 5 --before abc123") == Parsed("runs", {"limit": 5, "before": "abc123"})
    assert parse("incidents --open") == Parsed("incidents", {"open": True})
    assert parse("run r1") == Parsed("run", {"id": "r1"})
    assert parse("failover us-east --force") == Parsed("failover", {"cluster": "us-east", "force": True})
    assert parse("FAILBACK us-east") == Parsed("failback", {"cluster": "us-east"})
    assert parse("pause us-east --for=30m") == Parsed("pause", {"cluster": "us-east", "for": "30m"})
    assert parse("pause \u2014for 2h") == Parsed("pause", {"for": "2h"})  # a client's em dash
    assert parse("resume") == Parsed("resume")
    assert parse("approve r1") == Parsed("approve", {"run": "r1"})
    assert parse("deny r1") == Parsed("deny", {"run": "r1"})
    assert parse("failover us-east --force").text() == "failover us-east --force"
    for bad, why in [
        ("fail us-east", "unknown command"),
        ("failover", "which cluster?"),
        ("failover us-east eu-west", "one cluster only"),
        ("failover US_EAST", "is not a cluster"),
        ("failover us-east --yes", "unknown option --yes"),
        ("runs --limit 0", "--limit is a number"),
        ("runs --limit", "needs a value"),
        ("approve ../x", "is not a run id"),
        ("pause --for soon", "takes a duration"),
        ("status now", "takes no argument"),
        ("x" * 600, "at most"),
    ]:
        with pytest.raises(UsageError, match=why):
            parse(bad)


def test_button_context_is_signed_expires_and_binds_what_it_names() -> None:
    context = sign_context("k", {"action": "failover_approve", "run": "r1", "channel": "c"}, now=1000.0)
    assert verify_context("k", context, now=1001.0)["run"] == "r1"
    for forged, why in [
        ({**context, "run": "r2"}, "does not match"),
        ({k: v for k, v in context.items() if k != "sig"}, "no signature"),
        (context, "does not match"),  # another secret
    ]:
        with pytest.raises(Unverified, match=why):
            verify_context("other" if forged is context else "k", forged, now=1001.0)
    with pytest.raises(Unverified, match="expired"):
        verify_context("k", context, now=1000.0 + 8 * 86400)


def test_replies_fit_block_kit_limits_and_mattermost_markdown() -> None:
    many = {"runs": [{"id": f"run{i:04d}", "playbook": "p" * 40, "status": "succeeded"} for i in range(500)]}
    reply = render.reply_for(Parsed("runs"), {"ok": True, "result": many}, "https://f.example.com")
    message = render.slack_message(reply)
    assert len(message["blocks"]) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in message["blocks"] if "text" in b)
    assert message["response_type"] == "ephemeral"
    text = render.mattermost_text(
        render.reply_for(Parsed("status"), {"ok": True, "result": {"clusters": {"us-east": "failed"}}}, None)
    )
    assert "**us-east** failed" in text
    refused = render.slack_message(
        render.reply_for(Parsed("deny", {"run": "r1"}), {"ok": False, "error": "<b>&"}, None)
    )
    assert (
        refused["response_type"] == "ephemeral" and "&lt;b&gt;&amp;" in refused["blocks"][0]["text"]["text"]
    )
