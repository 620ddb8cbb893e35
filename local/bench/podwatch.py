"""Watching the pods of one namespace: when each was first seen bound to a node and first seen
Running, by this process's monotonic clock, grouped by a label."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable


class PodWatch(threading.Thread):
    """Records, with this process's monotonic clock, when each pod of a namespace is first seen
    bound to a node and first seen Running. ``group_label`` names the label holding its group;
    ``progress`` gets a line every 15 s while :meth:`wait_running` waits."""

    def __init__(self, core, namespace: str, group_label: str, progress: Callable[[str], None] = print) -> None:
        super().__init__(daemon=True, name=f"watch-{namespace}")
        self.core = core  # a kubernetes.client.CoreV1Api
        self.namespace = namespace
        self.group_label = group_label
        self.progress = progress
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.members: dict[str, set[str]] = {}
        self.changed = threading.Condition()
        self.stopping = False
        self.error: BaseException | None = None

    def _see(self, pod: dict, now: float) -> None:
        meta = pod.get("metadata") or {}
        name = meta.get("name")
        group = (meta.get("labels") or {}).get(self.group_label)
        with self.changed:
            if group:
                self.members.setdefault(group, set()).add(name)
            if (pod.get("spec") or {}).get("nodeName") and name not in self.bound:
                self.bound[name] = now
            if (pod.get("status") or {}).get("phase") == "Running" and name not in self.running:
                self.running[name] = now
            self.changed.notify_all()

    def run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            version = None
            while not self.stopping:
                if version is None:
                    listed = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)
                    now = time.monotonic()
                    for pod in listed.get("items", []):
                        self._see(pod, now)
                    version = listed["metadata"]["resourceVersion"]
                response = self.core.list_namespaced_pod(
                    self.namespace,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=30,
                    _preload_content=False,
                )
                for line in iter_resp_lines(response):
                    if not line:
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":  # 410 Gone: list again
                        version = None
                        break
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._see(event["object"], time.monotonic())
                response.release_conn()
        except BaseException as error:  # reported by wait_running()
            self.error = error
            with self.changed:
                self.changed.notify_all()

    def wait_running(self, count: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        with self.changed:
            while len(self.running) < count:
                if self.error is not None:
                    raise RuntimeError(f"watching pods of {self.namespace} failed: {self.error}") from self.error
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(
                        f"{what}: only {len(self.bound)} bound and {len(self.running)} Running "
                        f"of {count} pods after {timeout:.0f} s"
                    )
                if now - last_report > 15:
                    self.progress(f"  {what}: {len(self.bound)} bound, {len(self.running)} Running of {count}")
                    last_report = now
                self.changed.wait(timeout=1.0)

    def stop(self) -> None:
        self.stopping = True
