"""Properties of the playbook runner under arbitrary interleavings (issue 11).

Hypothesis drives a fleet of three clusters through detector changes and their events, manual drains,
approvals, time passing and leader crashes (the runner `abandon()`s as a deposed leader does and a new
one resumes the journal), against the real `Runner`, `RunExecutor`, actions and `BalancerActuator` over
in-memory fakes (tests/fakes.py) on virtual time, so an example takes milliseconds and never depends on
the machine's speed. Checked at every balancer write and notification, as it is sent:
- the last serving cluster is never drained;
- no weight is raised on a cluster that is failed at that moment;
- a cluster that never failed and that nobody asked to drain is never drained;
- an effect belongs to a step the journal shows as in flight (never to one already done), a drain
  writes once and a ramp once per ramp step, and a notification is never sent twice.
And at the end, after the detector's final events (recovered, then failed, then degraded, as after a
recovery hold) have been handled: a failed cluster carries no traffic unless the guard forbade it, a
cluster that recovered has its weight back, every run finished, none crashed or was fenced in a live
process, no restore saw drift (nothing but the runs writes these weights), and the idle runner holds no
run. The regression tests at the end pin the two bugs this property found (`RAISE_AFTER_GATE`,
`STALE_SLOT`), fixed since.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.bus.leadership import NotLeader
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config import Config
from orchestrator.core.yamlsource import load_yaml, validate_model
from orchestrator.notifiers import Notification
from orchestrator.playbooks.actions import Services
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.playbooks.loader import LoadedPlaybook, check_playbook
from orchestrator.playbooks.model import Playbook
from orchestrator.playbooks.runner import Runner
from tests.fakes import FakeBalancer, JournalData, LoopClock, MemoryJournal, MemoryNotifier, VirtualTimeLoop

pytestmark = pytest.mark.timeout(170)

CLUSTERS = ("eu-west", "us-east", "ap-south")
NOMINAL = 100
RAMP = (25, 50, 100)
MIN_HEALTHY = 1
CONFIG = Config.model_validate(
    {
        "clusters": [{"name": c, "weight": NOMINAL} for c in CLUSTERS],
        "load_balancers": [
            {
                "name": "global",
                "driver": "webhook",
                "webhook": {"url": "http://127.0.0.1:9/unused"},
                "members": {c: f"m-{c}" for c in CLUSTERS},
            }
        ],
        "notifiers": [
            {"name": "oncall", "driver": "webhook", "webhook": {"url": "http://127.0.0.1:9/unused"}}
        ],
    }
)

# the shipped playbooks (playbooks/), with intervals and retries scaled down to milliseconds
FAILOVER = """\
name: cluster-failover
on: {event: cluster.failed}
guards: {min_healthy_clusters: 1}
vars:
  survivors: "{{ clusters | selectattr('state', 'ne', 'failed') | map(attribute='name') | list }}"
steps:
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    timeout: 10s
    retry: {attempts: 5, backoff: exponential, initial: 20ms, max: 200ms}
  - id: page
    action: notify
    with:
      notifier: oncall
      severity: critical
      summary: "{{ event.cluster }} failed; traffic moved to {{ survivors | join(', ') }}"
      details: {reason: "{{ event.reason }}", change: "{{ steps.drain.change }}"}
on_failure:
  steps:
    - action: notify
      with: {notifier: oncall, severity: critical,
             summary: "failover of {{ event.cluster }} failed at {{ failed_step }}: {{ error }}"}
"""
FAILBACK = """\
name: cluster-failback
on: {event: cluster.recovered}
steps:
  - id: restore
    action: lb.restore
    with: {balancer: global, cluster: "{{ event.cluster }}", ramp: [25, 50, 100], interval: 10ms}
    retry: {attempts: 3, initial: 5ms}
  - id: tell
    action: notify
    with: {notifier: oncall, severity: info,
           summary: "{{ event.cluster }} recovered ({{ steps.restore.changes | join('; ') }})"}
"""
DEGRADED = """\
name: degraded-notify
on: {event: cluster.degraded}
guards: {cooldown: 10m}
steps:
  - id: tell
    action: notify
    with: {notifier: oncall, severity: warning,
           summary: "{{ event.cluster }} is degraded: {{ event.reason }}"}
"""
MANUAL_DRAIN = """\
name: manual-drain
on: {event: manual}
guards: {min_healthy_clusters: 1}
steps:
  - id: approve
    action: approval
    when: "not event.get('force', false)"
    with: {approvers: ["role:operator"], timeout: 10m, on_timeout: abort,
           summary: "{{ event.actor }} asks to drain {{ event.cluster }}"}
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    timeout: 10s
    retry: {attempts: 5, initial: 20ms, max: 200ms}
  - id: tell
    action: notify
    with: {notifier: oncall, severity: warning,
           summary: "{{ event.cluster }} drained by {{ event.actor }} ({{ steps.drain.change }})"}
"""


def _loaded(text: str) -> LoadedPlaybook:
    source = load_yaml("<property test>", text=text, expand=False)
    playbook = validate_model(source, Playbook)
    problems = check_playbook(source, playbook, CONFIG)
    assert not problems, problems
    return LoadedPlaybook(playbook, f"{playbook.name}.yaml", hashlib.sha256(text.encode()).hexdigest())


PLAYBOOKS = {lp.playbook.name: lp for lp in map(_loaded, (FAILOVER, FAILBACK, DEGRADED, MANUAL_DRAIN))}
EFFECTS_PER_STEP = {"lb.drain": 1, "lb.restore": len(RAMP)}
"""How many balancer writes one step may send: a drain once, a ramp once per ramp step."""
EVENT_FOR = {"failed": "cluster.failed", "degraded": "cluster.degraded", "healthy": "cluster.recovered"}

Op = tuple[Any, ...]

# Bugs this property found (each has a regression test at the end of the file).
RAISE_AFTER_GATE = "raise-after-gate"
"""A failback raises the weight of a cluster that failed between its health gate and its write:
`LbRestore.run` (playbooks/actions/lb.py) checks the gate, then awaits the journal save of `pending` and
the actuator's read of the weights, and checks neither the gate nor the preemption again before the set;
`BalancerActuator.set_weights` (actuators/lb.py) guarded `min_healthy_clusters` only. Fixed: the actuator
refuses raising a failed cluster's weight under its lock, and the ramp checks the preemption after the
journal write."""
STALE_SLOT = "submit-on-stale-slot"
"""`RunScheduler.submit` and `_cancel_queued` (playbooks/scheduling.py) read the key's active run and
queue, then await `_emit` (latest-wins or protective-first deduplication) and go on with what they read.
When the active run's task ends in that await, `_next` has freed the key, started the next queued run
(perhaps the very run being cancelled) and dropped the queue, so the new run is appended to a dropped
list (its event is lost), or queued behind nothing (it never starts: a drain on `cluster.failed` stalls,
and a finished run is "preempted"), or `queue.remove` raises ValueError out of `on_event` (the event is
lost, and a cancelled failback runs). Fixed: every slot and queue change is made before the first await.
"""


class Process:
    """One daemon process: its runner, actuator and approvals, fenced once deposed."""

    def __init__(self, world: World) -> None:
        self.deposed = False
        self.approvals = ApprovalBook()

        def fence() -> None:
            if self.deposed:
                raise NotLeader("this process was deposed")

        actuator = BalancerActuator(
            world.balancer, {c: NOMINAL for c in CLUSTERS}, lambda: world.states, world.store, fence
        )
        services = Services(
            CONFIG,
            {"global": actuator},
            {"oncall": world.notifier},
            lambda: world.states,
            approvals=self.approvals,
            fence=fence,
            clock=world.clock,
        )
        self.runner = Runner(services, MemoryJournal(world.journal), PLAYBOOKS, world.clusters, world.store)


class World:
    """The fleet, the outside world the runs act on, and what the invariants need to remember."""

    def __init__(self) -> None:
        self.states = dict.fromkeys(CLUSTERS, "healthy")
        """The detector's view, read by the runs and the actuator at decision time."""
        self.balancer = FakeBalancer("global", dict.fromkeys(CLUSTERS, NOMINAL))
        self.balancer.watchers.append(self._on_write)
        self.store = MemoryStateStore()
        self.journal = JournalData()
        self.journal.on_save = lambda run_id: self._tick("save")
        self.notifier = MemoryNotifier("oncall", self._on_notify)
        self.clock = LoopClock()
        self.ever_failed: set[str] = set()
        self.ever_unhealthy: set[str] = set()
        self.manual: set[str] = set()
        self.effects: Counter[tuple[str, str]] = Counter()
        self.violations: list[str] = []
        self.trace: list[str] = []
        self.seq = 0
        self.ticks: Counter[str] = Counter()
        """How many journal writes ("save") and balancer writes ("write") landed so far."""
        self._waiting: list[tuple[str, int, asyncio.Future[None]]] = []
        self.process = Process(self)

    def clusters(self) -> list[dict[str, Any]]:
        return [{"name": c, "state": self.states[c], "labels": {}, "weight": NOMINAL} for c in CLUSTERS]

    def now(self) -> str:
        return f"t={asyncio.get_running_loop().time():.3f}"

    def violation(self, text: str) -> None:
        self.violations.append(f"[{self.now()}] {text}")

    # checks at the moment of an effect ----------------------------------------------------------

    def _run_of_task(self) -> dict[str, Any] | None:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "?"
        return self.journal.record(name.removeprefix("run-")) if name.startswith("run-") else None

    def _step_in_flight(self, what: str, record: dict[str, Any] | None, step: str | None) -> bool:
        """Whether the journal shows the step an effect belongs to in flight: journalled `running` before
        the effect, and not already done (a resumed run never repeats a finished step)."""
        if record is None:
            self.violation(f"{what} sent outside any journalled run")
            return False
        if step is None:
            self.violation(f"{what} sent by {record['playbook']} run {record['id']}: no step of it does that")
            return False
        status = record["steps"].get(step, {}).get("status")
        if status != "running":
            self.violation(
                f"{what} sent by {record['playbook']} run {record['id']} step {step!r} while the journal "
                f"shows it {status!r}"
            )
        return True

    def _on_write(self, before: Mapping[str, int], after: Mapping[str, int]) -> None:
        self._tick("write")
        changed = sorted(c for c in after if after[c] != before[c])
        what = "write " + ", ".join(f"{c} {before[c]} -> {after[c]}" for c in changed)
        record = self._run_of_task()
        for c in changed:
            if after[c] > before[c] and self.states[c] == "failed":
                self.violation(f"{what}: raises the weight of {c}, which is failed")
            if after[c] == 0 and c not in self.ever_failed and c not in self.manual:
                self.violation(f"{what}: drains {c}, which never failed and nobody asked to drain")
        serving = [c for c in CLUSTERS if after[c] > 0 and self.states[c] != "failed"]
        if any(before[c] > 0 and after[c] == 0 for c in changed) and len(serving) < MIN_HEALTHY:
            self.violation(f"{what}: leaves {len(serving)} serving cluster(s), states {self.states}")
        steps = (record or {}).get("plan", {}).get("steps", [])
        step = next(
            (
                s
                for s in steps
                if s["action"].startswith("lb.") and (s.get("with") or {}).get("cluster") in changed
            ),
            None,
        )
        if self._step_in_flight(what, record, step and str(step["id"])):
            assert record is not None and step is not None
            key = (str(record["id"]), str(step["id"]))
            self.effects[key] += 1
            limit = EFFECTS_PER_STEP.get(step["action"], 1)
            if self.effects[key] > limit:
                self.violation(
                    f"{what}: write {self.effects[key]} of {record['playbook']} {key} (at most {limit})"
                )

    def _tick(self, kind: str) -> None:
        self.ticks[kind] += 1
        for waited, target, future in self._waiting:
            if waited == kind and self.ticks[kind] >= target and not future.done():
                future.set_result(None)

    async def until(self, kind: str, count: int, timeout_s: float = 1.0) -> None:
        """Let the runs go on until `count` more journal or balancer writes landed (or `timeout_s`)."""
        entry = (kind, self.ticks[kind] + count, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(entry[2], timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiting.remove(entry)

    def _on_notify(self, note: Notification) -> None:
        key = note.dedup_key or ""
        if sum(1 for n in self.notifier.sent if n.dedup_key == key) > 1:
            self.violation(f"notification {key} ({note.summary!r}) sent twice")
        self._step_in_flight(
            f"notification {key}", self._run_of_task(), key.split(".", 1)[1] if "." in key else None
        )

    # operations -----------------------------------------------------------------------------------

    async def send(self, kind: str, cluster: str) -> None:
        self.seq += 1
        event = {"type": kind, "cluster": cluster, "id": f"ev-{self.seq}", "reason": "property test"}
        await self.process.runner.on_event(event)

    async def detector(self, cluster: str, to: str) -> None:
        """The detector changes a cluster's state and publishes the transition's event."""
        frm = self.states[cluster]
        if frm == to or (frm == "failed" and to == "degraded"):  # failed ends only by recovering
            return
        self.states[cluster] = to
        self.trace.append(f"{self.now()} {cluster} {to}")
        if to == "failed":
            self.ever_failed.add(cluster)
        if to != "healthy":
            self.ever_unhealthy.add(cluster)
        await self.send(EVENT_FOR[to], cluster)

    async def apply(self, op: Op) -> None:
        kind = op[0]
        if kind == "flip":  # failed -> healthy (recovered), anything else -> failed
            await self.detector(op[1], "healthy" if self.states[op[1]] == "failed" else "failed")
        elif kind in ("fail", "recover", "degrade"):
            await self.detector(op[1], {"fail": "failed", "recover": "healthy", "degrade": "degraded"}[kind])
        elif kind == "resend":  # the bus delivers the current state's event again
            state = self.states[op[1]]
            if state != "healthy" or op[1] in self.ever_unhealthy:
                await self.send(EVENT_FOR[state], op[1])
        elif kind == "manual":  # `failover ctl failover CLUSTER`, as Commands submits it
            self.manual.add(op[1])
            self.seq += 1
            event = {"type": "manual", "command": "drain", "cluster": op[1], "actor": "alice", "force": False}
            await self.process.runner.submit(
                PLAYBOOKS["manual-drain"], {**event, "id": f"cmd-{self.seq}"}, actor="alice"
            )
        elif kind == "approve":
            for run_id in list(self.process.approvals.pending()):
                self.process.approvals.decide(run_id, True, "bob", "operator")
        elif kind == "yield":
            for _ in range(op[1]):
                await asyncio.sleep(0)
        elif kind == "sleep":
            await asyncio.sleep(op[1])
        elif kind == "saves":
            await self.until("save", op[1])
        elif kind == "write":
            await self.until("write", 1)
        elif kind == "adopt":  # the leader's periodic adoption of runs no task drives: none here
            await self.process.runner.resume_unfinished()
        elif kind == "crash":  # the leader is deposed; a new one adopts the journal
            self.trace.append(f"{self.now()} crash")
            old = self.process
            old.deposed = True
            await old.runner.abandon()
            self.process = Process(self)
            await self.process.runner.resume_unfinished()
        else:  # pragma: no cover - the strategy makes no other
            raise AssertionError(f"unknown operation {op!r}")

    async def quiesce(self, budget_s: float = 7200.0) -> None:
        """Wait (virtual time) until no run is active or queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        runner = self.process.runner
        while True:
            tasks = [r.task for r in runner.runs.values() if r.task is not None and not r.task.done()]
            if not tasks and not runner.pending:
                return
            if not tasks and not runner.active:  # queued behind nothing: no run will ever start them
                stuck = {k: [r.playbook for r in q] for k, q in runner.pending.items()}
                self.violation(f"{STALE_SLOT}: {stuck} queued, nothing active")
                return
            if loop.time() >= deadline:
                self.violation(f"runs still active after {budget_s:g}s: {[t.get_name() for t in tasks]}")
                return
            if tasks:
                await asyncio.wait(tasks, timeout=deadline - loop.time())
            else:
                await asyncio.sleep(0.01)

    async def settle(self) -> None:
        """Let everything finish, then the detector's last word on each cluster, as after a recovery
        hold: recoveries first (capacity back), then failures, then degradations."""
        await self.quiesce()
        for state in ("healthy", "failed", "degraded"):
            for c in CLUSTERS:
                if self.states[c] == state and (state != "healthy" or c in self.ever_unhealthy):
                    await self.send(EVENT_FOR[state], c)
            await self.quiesce()

    def check_end(self, logs: Sequence[Mapping[str, Any]]) -> None:
        weights = self.balancer.weights
        serving = [c for c in CLUSTERS if weights[c] > 0 and self.states[c] != "failed"]
        for c in CLUSTERS:
            if self.states[c] == "failed" and weights[c] > 0 and len(serving) >= MIN_HEALTHY:
                self.violation(f"end: {c} is failed and still has weight {weights[c]} ({serving} serve)")
            if (
                self.states[c] == "healthy"
                and c in self.ever_unhealthy
                and c not in self.manual
                and weights[c] != NOMINAL
            ):
                self.violation(f"end: {c} recovered but has weight {weights[c]}, not {NOMINAL}")
        for run_id, (_, record) in self.journal.records.items():
            if record["status"] in ("running", "delayed"):
                self.violation(f"end: run {run_id} ({record['playbook']}) is still {record['status']}")
            for step, entry in record["steps"].items():
                if isinstance(entry.get("result"), dict) and entry["result"].get("drift"):
                    self.violation(
                        f"run {run_id} ({record['playbook']}) step {step} saw drift "
                        f"{entry['result']['drift']!r}, but only runs write these weights"
                    )
        runner = self.process.runner
        queued = {run.id for runs in runner.pending.values() for run in runs}
        orphans = [r for r in runner.runs.values() if r.task is None and r.id not in queued]
        if orphans:  # queued on a list the scheduler had already dropped: never started, never journalled
            self.violation(f"{STALE_SLOT}: {[(r.playbook, r.key) for r in orphans]} lost")
        if any(r.task is not None for r in runner.runs.values()) or runner.active or runner.pending:
            self.violation(f"end: the idle runner still holds runs {sorted(runner.runs)}, {runner.active}")
        for entry in logs:
            if entry["event"] in ("run.crashed", "step.crashed", "run.fenced"):
                detail = entry.get("exception") or entry.get("reason") or ""
                self.violation(f"log {entry['event']} run {entry.get('run_id')}: {str(detail)[-600:]}")


async def scenario(ops: list[Op]) -> World:
    world = World()
    with capture_logs(processors=[structlog.processors.format_exc_info]) as logs:
        try:
            for op in ops:
                await world.apply(op)
            await world.settle()
            world.check_end(logs)
        finally:
            await world.process.runner.abandon()
    return world


def run(ops: list[Op]) -> World:
    """One example, on its own event loop on virtual time."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(scenario(ops))


def report(ops: list[Op], world: World) -> str:
    return "\n".join([f"operations: {ops}", "what happened: " + "; ".join(world.trace), *world.violations])


# Each change is followed by a pause, which ends at a given point of what the runs are doing (after so
# many journal writes, at the next balancer write, after so many scheduling turns) or after some virtual
# time. Most changes flip one cluster between failed and healthy, so that a short sequence reaches deep
# into its fail / recover cycles.
cluster = st.one_of(st.just(CLUSTERS[0]), st.just(CLUSTERS[0]), st.sampled_from(CLUSTERS))
change = st.one_of(
    st.tuples(st.just("flip"), cluster),
    st.tuples(st.just("flip"), cluster),
    st.just(("crash",)),
    st.tuples(st.just("flip"), cluster),
    st.tuples(st.just("degrade"), cluster),
    st.tuples(st.just("resend"), cluster),
    st.tuples(st.just("manual"), cluster),
    st.just(("approve",)),
    st.just(("adopt",)),
)
pause = st.one_of(
    st.tuples(st.just("saves"), st.integers(1, 6)),
    st.just(("write",)),
    st.tuples(st.just("yield"), st.integers(0, 8)),
    st.tuples(st.just("sleep"), st.sampled_from([0.01, 0.03, 1.0])),  # the ramp interval is 10 ms
)
operations = st.lists(st.tuples(change, pause), min_size=2, max_size=14).map(
    lambda pairs: [op for pair in pairs for op in pair]
)


E = CLUSTERS[0]


@given(operations)
# each of these broke an invariant on 9d79fcc, before the fixes of 203fd11:
# the first ramp step of a failback was not gated on health (a failback raised a failed cluster's weight)
@example([("fail", E), ("sleep", 1.0), ("recover", E), ("saves", 1), ("fail", E), ("sleep", 1.0)])
# a crash between a ramp step's set and its journal entry: the resumed ramp saw its own 25 as drift
@example([("fail", E), ("sleep", 1.0), ("recover", E), ("write",), ("crash",), ("sleep", 1.0)])
# a failback preempted at a crash was resumed unpreempted and ramped its failed cluster up
@example([("fail", E), ("sleep", 1.0), ("recover", E), ("saves", 1), ("fail", E), ("crash",), ("sleep", 1.0)])
def test_runner_invariants_hold_under_any_interleaving(ops: list[Op]) -> None:
    world = run(ops)
    assert not world.violations, report(ops, world)


def first_failure(sequences: list[list[Op]]) -> str | None:
    """The report of the first sequence that breaks an invariant, if any: a scan over
    the positions of one change, so the test does not depend on the exact number of awaits in a step."""
    for ops in sequences:
        world = run(ops)
        if world.violations:
            return report(ops, world)
    return None


def test_a_failback_never_raises_a_cluster_that_failed_after_its_gate() -> None:
    # eu-west fails again while its failback is between the health gate and the first set (0 -> 25)
    sequences = [
        [("fail", E), ("sleep", 1.0), ("recover", E), ("saves", n), ("fail", E), ("sleep", 1.0)]
        for n in range(1, 9)
    ]
    failure = first_failure(sequences)
    assert failure is None, failure


def test_a_recovery_that_arrives_as_the_active_run_ends_is_not_lost() -> None:
    # the failover run ends while a second cluster.recovered supersedes the queued failback
    failure = first_failure([[("fail", E), ("recover", E), ("yield", k), ("resend", E)] for k in range(40)])
    assert failure is None, failure


def test_a_failure_that_arrives_as_the_active_run_ends_is_drained_at_once() -> None:
    # the failback ends while cluster.failed cancels the queued notification (and manual drain): the
    # drain must still start, and on_event must not raise
    failure = first_failure(
        [
            [("fail", E), ("sleep", 1.0), ("recover", E), *queued, ("yield", k), ("fail", E)]
            for queued in ([("degrade", E)], [("degrade", E), ("manual", E)])
            for k in range(40)
        ]
    )
    assert failure is None, failure
