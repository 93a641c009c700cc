"""Kubernetes access: the API clients, one per cluster identity (kubernetes-asyncio is imported only in
`orchestrator.kube`, STYLE §Architecture).

`KubeClients` builds one `ApiClient` per (kubeconfig, context) or in-cluster identity, each with its
own `Configuration`, so clusters never share the library's global default configuration. `KubeCluster`
(`kube.cluster`) is the small typed facade the actuators and probes use; client exceptions become our
errors in one place (`kube.errors`).

Traps of kubernetes-asyncio this module handles so callers need not: `load_kube_config` is a coroutine
and, without `client_configuration`, overwrites a process-wide default; an unknown context fails with a
bare AssertionError.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from kubernetes_asyncio import client, config

from orchestrator.core.errors import PermanentError
from orchestrator.kube.cluster import DEFAULT_TIMEOUT_S, KubeCluster


class KubernetesRefLike(Protocol):
    """What `config.KubernetesRef` carries; a Protocol so tests and tools can pass their own."""

    @property
    def kubeconfig(self) -> str | None: ...

    @property
    def context(self) -> str | None: ...

    @property
    def in_cluster(self) -> bool: ...


class KubeClients:
    """One ApiClient per (kubeconfig, context) or in-cluster identity, built on first use; `close()` all."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._clients: dict[tuple[str | None, str | None, bool], client.ApiClient] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _key(ref: KubernetesRefLike) -> tuple[str | None, str | None, bool]:
        if ref.in_cluster:
            return (None, None, True)
        path = ref.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        expanded = os.pathsep.join(os.path.expanduser(p) for p in path.split(os.pathsep))
        return (expanded, ref.context, False)

    async def api_client(self, ref: KubernetesRefLike) -> client.ApiClient:
        key = self._key(ref)
        async with self._lock:
            if key not in self._clients:
                self._clients[key] = await self._build(*key)
            return self._clients[key]

    async def cluster(self, ref: KubernetesRefLike, name: str | None = None) -> KubeCluster:
        """The facade for one cluster; `name` (e.g. the cluster's name in our config) labels errors."""
        label = name or ref.context or ("in-cluster" if ref.in_cluster else "default")
        return KubeCluster(await self.api_client(ref), label, self.timeout_s)

    @staticmethod
    async def _build(path: str | None, context: str | None, in_cluster: bool) -> client.ApiClient:
        configuration = client.Configuration()
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                return client.ApiClient(configuration=configuration)
            assert path is not None
            if os.pathsep not in path and not os.path.exists(path):
                raise PermanentError(f"kubeconfig {path} does not exist")
            contexts, _ = config.list_kube_config_contexts(path)
            if context is not None and context not in [c["name"] for c in contexts]:
                raise PermanentError(f"kubeconfig {path} has no context {context!r}")
            loader = await config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        except config.ConfigException as e:
            raise PermanentError(f"kubernetes config: {e}") from e
        if hasattr(loader, "exec_plugin_expiry"):
            # exec credentials (EKS, GKE plugins) expire: re-run the plugin when the token is near expiry
            async def refresh(cfg: client.Configuration) -> None:
                await loader.load_from_exec_plugin()
                cfg.api_key["BearerToken"] = loader.token

            configuration.refresh_api_key_hook = refresh
        return client.ApiClient(configuration=configuration)

    async def close(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for api_client in clients:
            await api_client.close()

    async def __aenter__(self) -> KubeClients:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


__all__ = ["KubeClients", "KubernetesRefLike"]
