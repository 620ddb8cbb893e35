"""Counting the API server's requests: over all clients, and for one service account.

The API server's ``apiserver_request_total`` counts every request. To tell one client's requests
apart, :class:`RequestCounter` gives that client a service account of its own, a kubeconfig with a
token for it, and a FlowSchema matching exactly that account (priority level ``exempt``, like the
local cluster's admin-certificate clients, so API Priority and Fairness throttles no one); then
``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`` counts its requests alone.
Long-running watches count once, when opened.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from neuronplace.local.bench.prometheus import metric_sum

REQUESTS_ALL = "apiserver_request_total"
REQUESTS_BY_FLOW_SCHEMA = "apiserver_flowcontrol_dispatched_requests_total"


class RequestCounter:
    """Request counts of a local cluster's API server, with one service account counted alone.

    After :meth:`install`, :attr:`kubeconfig` authenticates as the service account (or is the
    cluster's admin kubeconfig when no token could be made: then :attr:`counts_account` is False
    and that client's requests cannot be told apart)."""

    def __init__(self, cluster, namespace: str, account: str, flow_schema: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.account = account
        self.flow_schema = flow_schema
        self.kubeconfig: str = cluster.kubeconfig
        self.counts_account = False

    def install(self, workdir: Path, progress: Callable[[str], None] = print) -> None:
        """The namespace, the service account (cluster-admin), its kubeconfig in ``workdir`` and the
        FlowSchema that counts its requests."""
        kubectl = self.cluster.kubectl
        kubectl("create", "namespace", self.namespace)
        kubectl("create", "serviceaccount", self.account, "-n", self.namespace)
        kubectl(
            "create",
            "clusterrolebinding",
            self.flow_schema,
            "--clusterrole=cluster-admin",
            f"--serviceaccount={self.namespace}:{self.account}",
        )
        token = kubectl("create", "token", self.account, "-n", self.namespace, "--duration=12h", check=False)
        if token.returncode != 0:
            progress(
                f"no service-account token ({token.stderr.strip()[-200:]}); {self.account} runs as admin "
                "and its own API requests cannot be told apart"
            )
            return
        path = Path(workdir) / f"{self.account}.kubeconfig"
        path.write_text(yaml.safe_dump(self._kubeconfig(token.stdout.strip())))
        self.kubeconfig = str(path)
        kubectl("apply", "-f", "-", input=json.dumps(self._flow_schema()))
        self.counts_account = True

    def _kubeconfig(self, token: str) -> dict:
        admin = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
        cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster_entry],
            "users": [{"name": self.account, "user": {"token": token}}],
            "contexts": [{"name": self.account, "context": {"cluster": cluster_entry["name"], "user": self.account}}],
            "current-context": self.account,
        }

    def _flow_schema(self) -> dict:
        return {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": self.flow_schema},
            "spec": {
                "priorityLevelConfiguration": {"name": "exempt"},
                "matchingPrecedence": 100,
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"name": self.account, "namespace": self.namespace},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "clusterScope": True,
                                "namespaces": ["*"],
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        }

    def counts(self) -> tuple[float, float]:
        """(all requests, the service account's requests) the API server has served so far."""
        text = self.cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
        return metric_sum(text, REQUESTS_ALL), metric_sum(text, REQUESTS_BY_FLOW_SCHEMA, flow_schema=self.flow_schema)
