"""The names the cache's parts (:mod:`.cache` and the modules it is made of) and their callers share."""

from __future__ import annotations

Key = tuple[str, str]  # (namespace, name) of a NeuronInference

DELETED = "DELETED"  # the watch event type of a deletion
