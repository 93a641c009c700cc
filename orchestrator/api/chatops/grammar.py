"""The chat command grammar: `failover ctl`'s, word for word (`/failover failover us-east --force`).

Parsed here into the `(command, args)` that `Commands.handle_as` takes, so chat, the API, `failover ctl`
and NATS requests run the same commands with the same arguments. Anything that does not parse is a
usage error naming the command's synopsis; nothing is guessed (`/failover fail us-east` is refused, not
taken for `failover`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.playbooks.journal import PAGE_MAX

RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLUSTER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DURATION = re.compile(r"^(\d+(\.\d+)?(ms|s|m|h|d))+$")
TEXT_MAX = 500
"""A command is a few words; a longer text is refused before it is split."""

SYNOPSIS: dict[str, tuple[str, str]] = {
    "status": ("status", "clusters' states, freeze, pauses, active runs, approvals"),
    "clusters": ("clusters", "clusters with state, labels and weight"),
    "runs": ("runs [--limit N] [--before RUN]", "recent runs, newest first"),
    "run": ("run RUN", "one run: status and steps"),
    "incidents": ("incidents [--open]", "incidents, newest first"),
    "failover": ("failover CLUSTER [--force]", "drain a cluster (waits for another operator's approval)"),
    "failback": ("failback CLUSTER", "restore a drained cluster"),
    "pause": ("pause [CLUSTER] [--for 30m]", "pause automation (all, or one cluster)"),
    "resume": ("resume [CLUSTER]", "resume automation (all also lifts an observer freeze)"),
    "approve": ("approve RUN", "approve a run waiting for approval (not your own)"),
    "deny": ("deny RUN", "deny a run waiting for approval"),
    "help": ("help", "this list"),
}


class UsageError(ValueError):
    """The text is not a command; the message says what is expected."""


@dataclass(frozen=True)
class Parsed:
    command: str
    args: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The command as `failover ctl` spells it (for answers and audit records)."""
        words = [self.command]
        for key in ("cluster", "id", "run"):
            if key in self.args:
                words.append(str(self.args[key]))
        for key, flag in (("limit", "--limit"), ("before", "--before"), ("for", "--for")):
            if key in self.args:
                words += [flag, str(self.args[key])]
        for key, flag in (("open", "--open"), ("force", "--force")):
            if self.args.get(key):
                words.append(flag)
        return " ".join(words)


def _options(words: list[str], allowed: dict[str, bool], command: str) -> tuple[list[str], dict[str, str]]:
    """Split `words` into positionals and options (`--flag`, `--key value`, `--key=value`);
    `allowed[name]` says whether the option takes a value."""
    positional: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if name not in allowed:
                raise UsageError(f"{command}: unknown option --{name[:30]}; usage: {SYNOPSIS[command][0]}")
            if allowed[name] and not eq:
                if i + 1 >= len(words):
                    raise UsageError(f"{command}: --{name} needs a value; usage: {SYNOPSIS[command][0]}")
                i += 1
                value = words[i]
            elif not allowed[name] and eq:
                raise UsageError(f"{command}: --{name} takes no value")
            options[name] = value if allowed[name] else "true"
        else:
            positional.append(word)
        i += 1
    return positional, options


def _one(
    positional: list[str], command: str, what: str, pattern: re.Pattern[str], optional: bool
) -> str | None:
    usage = SYNOPSIS[command][0]
    if len(positional) > 1:
        raise UsageError(f"{command}: one {what} only; usage: {usage}")
    if not positional:
        if optional:
            return None
        raise UsageError(f"{command}: which {what}? usage: {usage}")
    if not pattern.match(positional[0]):
        raise UsageError(f"{command}: {positional[0][:64]!r} is not a {what}")
    return positional[0]


def parse(text: str) -> Parsed:
    """`text` after the slash command's name; empty is `help`."""
    if len(text) > TEXT_MAX:
        raise UsageError(f"a command is at most {TEXT_MAX} characters")
    # clients turn `--` into an en or em dash and quotes into curly ones: undo that, nothing else
    words = text.replace("\u2014", "--").replace("\u2013", "--").split()
    if not words:
        return Parsed("help")
    command, rest = words[0].lower(), words[1:]
    if command not in SYNOPSIS:
        raise UsageError(f"unknown command {command[:40]!r}; try `help`")
    flags: dict[str, dict[str, bool]] = {
        "runs": {"limit": True, "before": True},
        "incidents": {"open": False},
        "failover": {"force": False},
        "pause": {"for": True},
    }
    positional, options = _options(rest, flags.get(command, {}), command)
    args: dict[str, Any] = {}
    if command in ("status", "clusters", "help", "runs", "incidents") and positional:
        raise UsageError(f"{command} takes no argument; usage: {SYNOPSIS[command][0]}")
    if command == "runs":
        if "limit" in options:
            if not options["limit"].isdigit() or not 1 <= int(options["limit"]) <= PAGE_MAX:
                raise UsageError(f"runs: --limit is a number from 1 to {PAGE_MAX}")
            args["limit"] = int(options["limit"])
        if "before" in options:
            if not RUN_ID.match(options["before"]):
                raise UsageError("runs: --before takes a run id")
            args["before"] = options["before"]
    elif command == "incidents" and "open" in options:
        args["open"] = True
    elif command == "run":
        args["id"] = _one(positional, command, "run id", RUN_ID, optional=False)
    elif command in ("approve", "deny"):
        args["run"] = _one(positional, command, "run id", RUN_ID, optional=False)
    elif command in ("failover", "failback"):
        args["cluster"] = _one(positional, command, "cluster", CLUSTER, optional=False)
        if "force" in options:
            args["force"] = True
    elif command in ("pause", "resume"):
        cluster = _one(positional, command, "cluster", CLUSTER, optional=True)
        if cluster:
            args["cluster"] = cluster
        if "for" in options:
            if not DURATION.match(options["for"]):
                raise UsageError("pause: --for takes a duration such as 30m or 2h")
            args["for"] = options["for"]
    return Parsed(command, args)
