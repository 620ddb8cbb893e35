{{/* Names and labels shared by every template. */}}

{{- define "neuronplace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just <release> when it already contains the chart name. */}}
{{- define "neuronplace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "neuronplace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "neuronplace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of everything in the release (every template's objects carry them, and the values'
commonLabels); the operator's objects add component=operator. */}}
{{- define "neuronplace.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "neuronplace.name" . }}
app.kubernetes.io/part-of: neuronplace
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "neuronplace.labels" -}}
{{ include "neuronplace.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The namespace of a monitoring object: its own override, else the release's. Takes (list override .). */}}
{{- define "neuronplace.monitoringNamespace" -}}
{{- default (index . 1).Release.Namespace (index . 0) }}
{{- end }}

{{- define "neuronplace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "neuronplace.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* <repository>@<digest> when a digest is given (the tag is then ignored), else <repository>:<tag or appVersion>. */}}
{{- define "neuronplace.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs inside every namespace it serves (a Role, or the ClusterRole in
cluster-wide mode). They match the calls of operator/sync.py and operator/writes.py one for one; kopf only watches (its handlers
are @kopf.on.event: no finalizers, no progress annotations, nothing patched on watched objects).
*/}}
{{- define "neuronplace.namespacedRules" -}}
# NeuronInferences: kopf's list+watch feeds the handlers; the startup sync lists them, and the full
# resync reads one it no longer lists (get) before forgetting it. Never written (no patch, update,
# create or delete): users own the spec.
- apiGroups: ["neuronplace.io"]
  resources: ["neuroninferences"]
  verbs: ["get", "list", "watch"]
# Status (observedGeneration, placements, conditions) is written with a merge patch of the status
# subresource, which is all the operator ever writes on a NeuronInference.
- apiGroups: ["neuronplace.io"]
  resources: ["neuroninferences/status"]
  verbs: ["patch"]
# Every replica and capacity request names its NeuronInference as owner with blockOwnerDeletion;
# the OwnerReferencesPermissionEnforcement admission plugin (enabled on many clusters) then refuses
# the pod create unless its creator may update the owner's finalizers. Nothing ever calls it.
- apiGroups: ["neuronplace.io"]
  resources: ["neuroninferences/finalizers"]
  verbs: ["update"]
# Replicas are plain pods: created already bound to the chosen node, deleted on scale-down,
# re-placement or template change; list+watch rebuild and maintain the core ledger (pods are the
# truth), and the full resync reads a pod it no longer lists (get) before freeing its cores.
# Never patched or updated. pods/exec, pods/attach, pods/log, pods/eviction are separate
# subresources and are not granted.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# PersistentVolumeClaims named by replica templates decide where a replica can use its volumes
# (the volume they are bound to, or whether they wait for their first consumer); listed at startup
# and at every full resync, then watched. Read-only: kube-scheduler and the volume controller bind them.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch"]
# ResourceClaims: one per replica on a DRA-managed node, created before its pod and deleted with it
# (or when no pod uses it, after a restart); allocated ones of others hold their chips, so all are
# listed and watched; a leftover one is read (get) before it is adopted. Never changed (no patch or
# update) nor allocated here:
# kube-scheduler writes status.allocation.
- apiGroups: ["resource.k8s.io"]
  resources: ["resourceclaims"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Events on NeuronInferences (placed, unschedulable, re-placed, pod rejected); kopf posts its own
# warnings the same way. Created only, never updated.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* "host:port" for a listen URL; an IPv6 address goes in brackets. Takes (list host port). */}}
{{- define "neuronplace.hostPort" -}}
{{- $host := index . 0 -}}
{{- $port := index . 1 -}}
{{- if contains ":" (toString $host) -}}[{{ $host }}]:{{ $port }}{{- else -}}{{ $host }}:{{ $port }}{{- end -}}
{{- end }}

{{/* The operator pod's PriorityClass: priorityClassName, else the one priorityClass.create makes, else none. */}}
{{- define "neuronplace.operatorPriorityClass" -}}
{{- if .Values.priorityClassName }}
{{- .Values.priorityClassName }}
{{- else if .Values.priorityClass.create }}
{{- default (include "neuronplace.fullname" .) .Values.priorityClass.name }}
{{- end }}
{{- end }}

{{/*
The operator pod's affinity: .Values.affinity, with a required nodeAffinity that keeps it off
Neuron nodes (and Karpenter's, if asked) unless .Values.affinity has a nodeAffinity of its own.
NotIn and DoesNotExist also match nodes without the label, so ordinary nodes of any kind qualify.
*/}}
{{- define "neuronplace.affinity" -}}
{{- $affinity := deepCopy .Values.affinity }}
{{- $config := .Values.operatorNodeAffinity }}
{{- $expressions := list }}
{{- if $config.avoidNeuronNodes }}
{{- $expressions = append $expressions (dict "key" "node.kubernetes.io/instance-type" "operator" "NotIn" "values" $config.neuronInstanceTypes) }}
{{- $expressions = append $expressions (dict "key" "karpenter.k8s.aws/instance-accelerator-manufacturer" "operator" "NotIn" "values" (list "aws")) }}
{{- end }}
{{- if $config.avoidKarpenterNodes }}
{{- $expressions = append $expressions (dict "key" "karpenter.sh/nodepool" "operator" "DoesNotExist") }}
{{- end }}
{{- if and $expressions (not (hasKey $affinity "nodeAffinity")) }}
{{- $terms := list (dict "matchExpressions" $expressions) }}
{{- $_ := set $affinity "nodeAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" $terms)) }}
{{- end }}
{{- /* The replicas on different nodes where possible: a node's loss takes at most one. */}}
{{- if and (gt (int .Values.replicaCount) 1) (not (hasKey $affinity "podAntiAffinity")) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "neuronplace.selectorLabels" . | fromYaml)) }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- end }}
{{- end }}
