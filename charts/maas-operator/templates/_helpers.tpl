{{/* The release's objects are named after it (the chart's name when the release says it already). */}}
{{- define "maas-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "maas-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "maas-operator.labels" -}}
{{ include "maas-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "maas-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "maas-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "maas-operator.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{/*
The rules of the operator's Role (or ClusterRole) in a namespace it watches: exactly the calls it makes
(operator/maas_operator/kube.py, controller.py, handlers.py):
- MaaSJobs: listed at start-up and watched (kopf); deleted once ttlSecondsAfterFinished has passed; the status
  subresource is server-side applied; `update` on maasjobs/finalizers lets its children carry an owner
  reference with blockOwnerDeletion where the OwnerReferencesPermissionEnforcement admission plugin is on.
- Pods: listed and watched (every pod, as GPU holders), read one by one when a watch event may have been
  missed, created and changed by server-side apply (a patch that creates needs `create` too), deleted.
- ConfigMaps (the plans): listed and watched, server-side applied, deleted. Services (worker DNS): applied
  only; owner references delete them with their job.
- Events on the job: created.
No Secrets, no get/list of anything else.
*/}}
{{- define "maas-operator.namespacedRules" -}}
- apiGroups: ["maas.dev"]
  resources: ["maasjobs"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["maas.dev"]
  resources: ["maasjobs/status"]
  verbs: ["patch"]
- apiGroups: ["maas.dev"]
  resources: ["maasjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods/status"]
  # Serve: the pipeline-ready readiness gate on each replica's first worker.
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Nodes are cluster-scoped: listed and watched (GPUs, labels, readiness) in either mode. */}}
{{- define "maas-operator.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- end -}}
