"""NeuronInference manifests as the tests, the reliability harness and the benchmarks write them: one
builder with defaults a caller need not repeat and keyword overrides for what it is about (pure)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from neuronplace.local.fleet import KWOK_TOLERATION, POOL_LABEL
from neuronplace.placement.names import API_VERSION, KIND


def inference(
    name: str = "bert",
    *,
    namespace: str | None = None,
    uid: str | None = None,
    generation: int | None = None,
    created: str | None = None,
    replicas: int | None = 1,
    cores: int = 2,
    processes: int | None = 1,
    pool: str | None = None,
    strategy: str | None = "BinPack",
    tolerations: Sequence[Mapping] = (KWOK_TOLERATION,),
    image: str = "model:1",
    containers: Sequence[Mapping] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    template_spec: Mapping | None = None,
    spec: Mapping | None = None,
    **placement,
) -> dict:
    """A NeuronInference manifest. Metadata beyond the name only where given; ``replicas`` or
    ``processes`` None leaves that field out. ``spec.placement`` is ``strategy``, ``tolerations``
    (the kwok nodes' taint by default) and ``placement``'s keys, with ``pool`` as a nodeSelector on
    :data:`~neuronplace.local.fleet.POOL_LABEL`. The template's labels are ``labels`` (default
    ``app: NAME``; ``{}`` for none) and ``annotations``, and its spec is ``template_spec``, else one container per
    ``containers`` (default one ``model`` running ``image``). ``spec``'s keys are added last."""
    metadata: dict = {"name": name}
    for key, value in (("namespace", namespace), ("uid", uid), ("generation", generation)):
        if value is not None:
            metadata[key] = value
    if created is not None:
        metadata["creationTimestamp"] = created
    spec_placement: dict = {"strategy": strategy} if strategy else {}
    if tolerations:
        spec_placement["tolerations"] = [dict(t) for t in tolerations]
    spec_placement.update(copy.deepcopy(placement))
    if pool:
        spec_placement["nodeSelector"] = {**spec_placement.get("nodeSelector", {}), POOL_LABEL: pool}
    pod_spec = copy.deepcopy(dict(template_spec)) if template_spec is not None else None
    if pod_spec is None:
        pod_spec = {"containers": [dict(c) for c in containers or [{"name": "model", "image": image}]]}
    template_labels = {"app": name} if labels is None else dict(labels)
    template_metadata: dict = {"labels": template_labels} if template_labels else {}
    if annotations:
        template_metadata["annotations"] = dict(annotations)
    template: dict = {"metadata": template_metadata} if template_metadata else {}
    template["spec"] = pod_spec
    body: dict = {}
    if replicas is not None:
        body["replicas"] = replicas
    body["coresPerReplica"] = cores
    if processes is not None:
        body["processesPerReplica"] = processes
    if spec_placement:
        body["placement"] = spec_placement
    body["template"] = template
    body.update(copy.deepcopy(dict(spec or {})))
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body}
