"""Answers for a channel: one `Reply` per command answer, drawn as Slack Block Kit or Mattermost markdown.

A reply reads well among people talking: the first line says what happened (and to what), the details
follow in a few short lines, and the last line says who asked, so a channel's history is its own log.
Refusals are ephemeral (only the asker sees them) and name what is missing; results of commands that
change something are posted in the channel, since everyone there should know a cluster was drained.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.api.chatops.grammar import SYNOPSIS, Parsed

SECTION_LIMIT = 2900
"""A section's text is at most 3000 characters in Block Kit: leave room for the ellipsis."""
LINES_MAX = 25
"""A list (runs, incidents) shows at most this many lines; the rest is `failover ctl`'s job."""
_STATE = {"healthy": ":large_green_circle:", "degraded": ":large_yellow_circle:", "failed": ":red_circle:"}
_MUTATING = {"failover", "failback", "pause", "resume", "approve", "deny"}


@dataclass
class Reply:
    title: str
    lines: list[str] = field(default_factory=list)
    ephemeral: bool = False
    context: str = ""
    buttons: list[dict[str, str]] = field(default_factory=list)
    """`{action, label, value, style}`: drawn as Block Kit buttons or Mattermost actions."""
    awaiting: list[str] = field(default_factory=list)
    """Runs this command started that wait for another operator's approval."""
    decided: bool = False
    """An approve or deny that decided its run (not one approval of several, not a refusal)."""


def escape(text: str) -> str:
    """Slack mrkdwn's control characters; Mattermost shows the entities as characters too."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int = SECTION_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return re.sub(r"&[a-z]{0,4}$", "", text[: limit - 1]) + "…"


def when(value: Any) -> str:
    """An RFC 3339 or epoch time as `2026-11-30 03:14:05Z`."""
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    text = str(value or "").replace("T", " ")
    head, dot, _ = text.partition(".")
    return f"{head}Z" if dot and text.endswith("Z") else text


def help_reply() -> Reply:
    lines = [f"`/failover {usage}` — {what}" for usage, what in SYNOPSIS.values()]
    return Reply("Failover commands", lines, ephemeral=True)


def refusal(message: str) -> Reply:
    return Reply(f":no_entry: {escape(message)}", ephemeral=True)


def actor_text(actor: str, people: Mapping[str, str] | None = None) -> str:
    """`slack:U0123` as a mention (Slack shows the person's current name); an actor that `people` maps
    to a Slack user ID (`alice` -> `U0123`, from `chatops.slack.users`' `actor`) as that user's
    mention too; other actors as they are."""
    if actor.startswith("slack:"):
        return f"<@{actor.removeprefix('slack:')}>"
    if people and actor in people:
        return f"<@{people[actor]}>"
    return escape(actor)


def mentions(text: str) -> str:
    """Escaped `text` with every `slack:U0123` in it turned into a mention."""
    return re.sub(r"slack:([UW][A-Z0-9]{2,20})\b", r"<@\1>", escape(text))


def link(base: str | None, path: str, label: str) -> str:
    return f"<{base}{path}|{escape(label)}>" if base else f"`{escape(label)}`"


def reply_for(parsed: Parsed, answer: dict[str, Any], base_url: str | None) -> Reply:
    """The reply to a command answer (`{ok, result}` or `{ok: false, error}`)."""
    if not answer.get("ok"):
        return refusal(f"{parsed.text()}: {answer.get('error') or 'failed'}")
    result = answer.get("result")
    show = _VIEWS.get(parsed.command)
    reply = show(parsed, result, base_url) if show else Reply(f"`{escape(parsed.text())}`: done")
    reply.ephemeral = parsed.command not in _MUTATING
    return reply


def _status(parsed: Parsed, result: Any, base: str | None) -> Reply:
    status = result if isinstance(result, dict) else {}
    clusters = status.get("clusters") or {}
    lines = [
        f"{_STATE.get(str(s), ':white_circle:')} *{escape(str(n))}* {escape(str(s))}"
        for n, s in clusters.items()
    ]
    if status.get("frozen"):
        lines.append(":snowflake: *frozen* by the observer guard (`/failover resume` lifts it)")
    active = status.get("active_runs") or {}
    if active:
        runs = ", ".join(link(base, f"/runs/{r}", str(r)) for r in active.values())
        lines.append(f"*active runs*: {runs}")
    waiting = status.get("waiting_approval") or []
    if waiting:
        lines.append(
            "*waiting for approval*: " + ", ".join(link(base, f"/runs/{r}", str(r)) for r in waiting)
        )
    ready = "ready" if status.get("ready") else "NOT ready"
    return Reply(f"Failover status: {ready}", lines or ["no clusters"])


def _clusters(parsed: Parsed, result: Any, base: str | None) -> Reply:
    lines = []
    for c in result if isinstance(result, list) else []:
        labels = ", ".join(f"{k}={v}" for k, v in sorted((c.get("labels") or {}).items()))
        lines.append(
            f"{_STATE.get(str(c.get('state')), ':white_circle:')} *{escape(str(c.get('name')))}* "
            f"{escape(str(c.get('state')))}, weight {c.get('weight')}"
            + (f" ({escape(labels)})" if labels else "")
        )
    return Reply("Clusters", lines or ["no clusters"])


def _runs(parsed: Parsed, result: Any, base: str | None) -> Reply:
    runs = (result or {}).get("runs") or [] if isinstance(result, dict) else []
    lines = [
        f"{link(base, '/runs/' + str(r.get('id')), str(r.get('id')))} {escape(str(r.get('playbook')))} "
        f"*{escape(str(r.get('status')))}* {when(r.get('created_at'))}"
        + (f" — {escape(str(r.get('error'))[:200])}" if r.get("error") else "")
        for r in runs[:LINES_MAX]
    ]
    if isinstance(result, dict) and result.get("next"):
        lines.append(f"older: `/failover runs --before {escape(str(result['next']))}`")
    return Reply("Recent runs", lines or ["no runs"])


def _run(parsed: Parsed, result: Any, base: str | None) -> Reply:
    record = result if isinstance(result, dict) else {}
    event = record.get("event") or {}
    steps = record.get("steps") or {}
    lines = [
        f"*playbook* {escape(str(record.get('playbook')))}, *event* "
        f"{escape(str(event.get('type', '')))} {escape(str(event.get('cluster', '')))}".rstrip(),
        f"*started* {when(record.get('created_at'))}"
        + (f" by {escape(str(record['actor']))}" if record.get("actor") else ""),
    ]
    for step_id, entry in list(steps.items())[:LINES_MAX] if isinstance(steps, dict) else []:
        state = entry.get("status") if isinstance(entry, dict) else entry
        error = entry.get("error") if isinstance(entry, dict) else None
        lines.append(
            f"• `{escape(str(step_id))}` {escape(str(state))}"
            + (f": {escape(str(error)[:200])}" if error else "")
        )
    if record.get("error"):
        lines.append(f"*error*: {escape(str(record['error'])[:500])}")
    run_id = str(record.get("id"))
    return Reply(f"Run {link(base, f'/runs/{run_id}', run_id)}: {escape(str(record.get('status')))}", lines)


def _incidents(parsed: Parsed, result: Any, base: str | None) -> Reply:
    incidents = (result or {}).get("incidents") or [] if isinstance(result, dict) else []
    lines = [
        f"{link(base, '/incidents/' + str(i.get('id')), str(i.get('id')))} *{escape(str(i.get('state')))}* "
        f"opened {when(i.get('opened_at'))}"
        + (f" — {escape(str(i['summary'])[:200])}" if i.get("summary") else "")
        for i in incidents[:LINES_MAX]
    ]
    return Reply("Open incidents" if parsed.args.get("open") else "Incidents", lines or ["no incidents"])


def _started(parsed: Parsed, result: Any, base: str | None) -> Reply:
    runs = (result or {}).get("runs") or [] if isinstance(result, dict) else []
    cluster = escape(str(parsed.args.get("cluster")))
    verb = "drain" if parsed.command == "failover" else "restore"
    if not runs:
        return Reply(f"No run started to {verb} *{cluster}* (another run already works on it)")
    names = ", ".join(link(base, f"/runs/{r}", str(r)) for r in runs)
    waits = parsed.command == "failover" and not parsed.args.get("force")
    note = " — another operator must approve" if waits else ""
    return Reply(
        f"Asked to {verb} *{cluster}*: run {names}{note}", awaiting=[str(r) for r in runs] if waits else []
    )


def _paused(parsed: Parsed, result: Any, base: str | None) -> Reply:
    scope = escape(str(parsed.args.get("cluster") or "all automation"))
    until = (result or {}).get("until") if isinstance(result, dict) else None
    if parsed.command == "pause":
        return Reply(
            f":double_vertical_bar: Paused {scope}" + (f" until {when(until)}" if until else " until resumed")
        )
    return Reply(f":arrow_forward: Resumed {scope}")


def _decided(parsed: Parsed, result: Any, base: str | None) -> Reply:
    r = result if isinstance(result, dict) else {}
    run = link(base, f"/runs/{r.get('run')}", str(r.get("run")))
    if not r.get("approved"):
        return Reply(f":x: Run {run} denied by {actor_text(str(r.get('by')))}", decided=True)
    approvals = r.get("approvals") or []
    if r.get("decided"):
        return Reply(
            f":white_check_mark: Run {run} approved by {', '.join(actor_text(str(a)) for a in approvals)}",
            decided=True,
        )
    return Reply(
        f":ballot_box_with_check: {actor_text(str(r.get('by')))} approved run {run}: "
        f"{len(approvals)} of {r.get('needed')}"
    )


_VIEWS = {
    "status": _status,
    "clusters": _clusters,
    "runs": _runs,
    "run": _run,
    "incidents": _incidents,
    "failover": _started,
    "failback": _started,
    "pause": _paused,
    "resume": _paused,
    "approve": _decided,
    "deny": _decided,
}


# drawing ----------------------------------------------------------------------------------------------


def slack_message(reply: Reply) -> dict[str, Any]:
    """`{response_type, text, blocks}` for a slash-command answer or a `response_url` follow-up."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": cut(reply.title)}}]
    for head in sections("\n".join(reply.lines)):  # long lists go in several sections, not cut
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": head}})
        if len(blocks) >= 45:
            break
    if reply.buttons:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": b["action"],
                        "text": {"type": "plain_text", "text": b["label"][:75]},
                        "value": b["value"][:2000],
                        **({"style": b["style"]} if b.get("style") else {}),
                    }
                    for b in reply.buttons
                ],
            }
        )
    if reply.context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(reply.context)}]})
    return {
        "response_type": "ephemeral" if reply.ephemeral else "in_channel",
        "text": cut(_plain(reply.title), 3000),
        "blocks": blocks,
    }


def sections(body: str, limit: int = SECTION_LIMIT) -> list[str]:
    """`body` in pieces of at most `limit`: at a line break when the piece has one, else (one very long
    line) before a `<link|label>`, `<@mention>` or `&entity;` that would be cut in two."""
    out: list[str] = []
    while body:
        if len(body) <= limit:
            out.append(body)
            break
        head = body[:limit]
        newline = head.rfind("\n")
        if newline > 0:
            out.append(head[:newline])
            body = body[newline + 1 :]
            continue
        opened, closed = head.rfind("<"), head.rfind(">")
        if opened > closed and opened > 0:
            head = head[:opened]
        entity = re.search(r"&[a-z0-9#]{0,8}$", head)
        if entity and entity.start() > 0:
            head = head[: entity.start()]
        out.append(head)
        body = body[len(head) :]
    return out


def _plain(text: str) -> str:
    """The notification fallback: links shown as their label."""
    return re.sub(r"<[^|>]+\|([^>]+)>", r"\1", text)


def mattermost_text(reply: Reply) -> str:
    """Mattermost markdown: `*x*` is italic there, so Slack's bold becomes `**x**`; links become
    `[label](url)`; emoji shortcodes are shared."""
    text = "\n".join([reply.title, *reply.lines] + ([f"_{reply.context}_"] if reply.context else []))
    text = re.sub(r"<([^|>]+)\|([^>]+)>", r"[\2](\1)", text)
    text = re.sub(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", r"**\1**", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")[:16000]
