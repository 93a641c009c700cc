"""May we? Kubernetes permissions asked with a SelfSubjectAccessReview (`kubectl auth can-i`).

A failover that finds out at 3 a.m. that its service account cannot update `deployments/scale` on a
survivor has already lost the time it was built to save. The readiness checks (DESIGN §17) ask every
cluster, with the identity the steps will use, whether each verb a step needs is allowed. The review is
answered by the cluster's own authorizers (RBAC, webhooks), so it is the truth for that identity, and it
changes nothing: creating a review stores no object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from orchestrator.kube.client import KubeClients, KubernetesRefLike
from orchestrator.kube.cluster import DEFAULT_TIMEOUT_S
from orchestrator.kube.errors import translate


@dataclass(frozen=True, order=True)
class Access:
    """One permission: `update deployments/scale (apps) in shop`."""

    verb: str
    group: str
    resource: str
    namespace: str
    subresource: str = ""
    name: str = ""

    def __str__(self) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        if self.group:
            what += f".{self.group}"
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {what}{f' {self.name}' if self.name else ''}{where}"


@dataclass(frozen=True)
class Answer:
    allowed: bool
    reason: str
    """The authorizer's reason (RBAC's "cannot update resource ..."), or its evaluation error."""


async def can_i(
    clients: KubeClients, ref: KubernetesRefLike, access: Access, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Answer:
    """Ask the cluster behind `ref` whether its identity may do `access`; errors are ours (TemporaryError
    when it cannot be asked, PermanentError when the review itself is refused)."""
    api = client.AuthorizationV1Api(await clients.api_client(ref))
    body = client.V1SelfSubjectAccessReview(
        api_version="authorization.k8s.io/v1",
        kind="SelfSubjectAccessReview",
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=access.verb,
                group=access.group,
                resource=access.resource,
                subresource=access.subresource or None,
                namespace=access.namespace or None,
                name=access.name or None,
            )
        ),
    )
    call = partial(api.create_self_subject_access_review, body, _request_timeout=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            answer = await call()
    except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError, TypeError) as e:
        raise translate(e, f"can-i {access}") from e
    status = answer.status
    if status is None:
        return Answer(False, "the API server answered the review without a status")
    reason = status.reason or status.evaluation_error or ""
    return Answer(bool(status.allowed) and not bool(status.denied), reason)


__all__ = ["Access", "Answer", "can_i"]
