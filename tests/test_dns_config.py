"""The `rfc2136` and `powerdns` config sections, DNS members (cluster -> addresses), and the playbook
checks that only make sense for DNS: no ramps, weights 0 or 1. Errors are `file:line: path: message`
and never carry the TSIG secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.config import load_config
from orchestrator.core.errors import ValidationFailed
from orchestrator.playbooks.loader import load_playbooks

HEAD = """\
state_dir: {work}/state
clusters:
  - {{name: eu-west, probes: [{{name: i, http: {{url: "http://127.0.0.1:1/healthz"}}}}]}}
  - {{name: us-east, probes: [{{name: i, http: {{url: "http://127.0.0.1:2/healthz"}}}}]}}
playbooks: {{paths: ["{work}/books"]}}
load_balancers:
"""
SECRET = "c2VjcmV0LXRoYXQtYmluZC1kb2VzLW5vdC1rbm93LXh5eg=="
DNS = """\
  - name: dns
    driver: rfc2136
    rfc2136: {{server: "127.0.0.1:5353", zone: Example.Test, name: www.example.test, ttl: 30,
              tsig: {{name: failover, algorithm: {algorithm}, secret: "{secret}"}}}}
    members: {{eu-west: [192.0.2.10, "2001:DB8::0:10"], us-east: {us}}}
  - name: pdns
    driver: powerdns
    powerdns: {{api_url: "http://127.0.0.1:8081", api_key: "k3y-k3y-k3y", zone: example.test., name: {name}}}
    members: {{eu-west: [192.0.2.10], us-east: [{pdns_us}]}}
"""


def write(
    tmp_path: Path,
    *,
    secret: str = SECRET,
    algorithm: str = "hmac-sha512",
    us: str = "198.51.100.10",
    name: str = "www.example.test.",
    pdns_us: str = "198.51.100.10",
) -> Path:
    (tmp_path / "books").mkdir(exist_ok=True)
    path = tmp_path / "failover.yaml"
    body = DNS.format(secret=secret, algorithm=algorithm, us=us, name=name, pdns_us=pdns_us)
    path.write_text(HEAD.format(work=tmp_path) + body)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def test_dns_members_are_address_lists_in_canonical_form(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    dns = config.balancer("dns")
    assert dns.addresses == {"eu-west": ["192.0.2.10", "2001:db8::10"], "us-east": ["198.51.100.10"]}
    assert dns.members == {"eu-west": "192.0.2.10, 2001:db8::10", "us-east": "198.51.100.10"}
    assert dns.rfc2136 is not None
    assert (dns.rfc2136.zone, dns.rfc2136.name, dns.rfc2136.server) == (
        "example.test.",
        "www.example.test.",
        "127.0.0.1:5353",
    )
    assert dns.rfc2136.tsig is not None and dns.rfc2136.tsig.name == "failover."
    assert SECRET not in repr(config)


def test_bad_addresses_and_shared_addresses_are_refused_with_their_line(tmp_path: Path) -> None:
    found = problems(write(tmp_path, us="[198.51.100.300]", pdns_us="192.0.2.10"))
    assert any(
        p.endswith(
            "failover.yaml:7: load_balancers[0]: members.us-east: "
            "'198.51.100.300' is not an IPv4 or IPv6 address"
        )
        for p in found
    ), found
    assert any("failover.yaml:12:" in p and "192.0.2.10 is also an address of eu-west" in p for p in found), (
        found
    )


@pytest.mark.parametrize(
    ("secret", "message"),
    [("not base64 at all!!", "must be base64"), ("c2hvcnQ=", "decodes to 5 bytes")],
)
def test_the_tsig_secret_is_checked_and_never_echoed(tmp_path: Path, secret: str, message: str) -> None:
    [problem] = problems(write(tmp_path, secret=secret))
    assert ":10: load_balancers[0].rfc2136.tsig.secret: " in problem and message in problem
    assert secret not in problem


def test_unknown_algorithm_and_a_name_outside_the_zone(tmp_path: Path) -> None:
    found = problems(write(tmp_path, algorithm="hmac-sha3", name="www.other.test"))
    assert any("load_balancers[0].rfc2136.tsig.algorithm" in p for p in found), found
    assert any(
        "load_balancers[1].powerdns: name www.other.test. is not in zone example.test." in p for p in found
    )


BOOK = """\
name: back
on: {event: cluster.recovered}
steps:
  - id: restore
    action: lb.restore
    with: {balancer: dns, cluster: "{{ event.cluster }}", ramp: [25, 50, 100], interval: 1s}
  - id: weights
    action: lb.set_weights
    with: {balancer: pdns, weights: {eu-west: 100, us-east: 1}}
  - id: plain
    action: lb.restore
    with: {balancer: pdns, cluster: "{{ event.cluster }}"}
"""


def test_ramps_and_weights_above_1_are_refused_for_dns_balancers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    (tmp_path / "books" / "back.yaml").write_text(BOOK)
    with pytest.raises(ValidationFailed) as caught:
        load_playbooks(config.playbook_paths(), config)
    found = [str(p) for p in caught.value.problems]
    assert len(found) == 2, found
    assert found[0].endswith(
        "back.yaml:6: steps[0].with.ramp: balancer dns (rfc2136) has no weights: a cluster's addresses come "
        "back all at once, so a ramp cannot be honoured; remove it"
    )
    assert "back.yaml:9: steps[1].with.weights.eu-west: balancer pdns (powerdns) takes 0" in found[1]
