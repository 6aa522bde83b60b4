{{/*
The chart's name, or nameOverride. Kubernetes names are at most 63 characters.
*/}}
{{- define "kubestep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it already contains
the chart's name (`helm install kubestep ...` gives `kubestep`, not `kubestep-kubestep`), else both.
*/}}
{{- define "kubestep.fullname" -}}
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

{{/*
The name of the release's cluster-scoped objects (ClusterRoles, bindings, the admission policy): the full
name and the release namespace, so that releases in different namespaces never collide.
*/}}
{{- define "kubestep.clusterName" -}}
{{- printf "%s-%s" (include "kubestep.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
chart label: name and version.
*/}}
{{- define "kubestep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "kubestep.labels" -}}
helm.sh/chart: {{ include "kubestep.chart" . }}
{{ include "kubestep.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator's pods (never change them: a Deployment's selector is immutable).
*/}}
{{- define "kubestep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubestep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kubestep.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubestep.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount the operator runs as, or set serviceAccount.create=true" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The user name the API server gives the operator: the only one allowed to write WorkflowRun specs.
*/}}
{{- define "kubestep.operatorUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "kubestep.serviceAccountName" .) }}
{{- end }}

{{/*
An image reference from {repository, tag}, the tag defaulting to the chart's appVersion.
*/}}
{{- define "kubestep.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}

{{/*
What the operator does in each namespace it manages (a Role per namespace, or one ClusterRole), exactly
the calls it makes and no more:
- kubestep's own resources: kopf watches them (list, watch); the reconcilers read one (get), create
  runs (for Events, schedules and invoked workflows) and Events (step.send_event, a run's end), cancel
  child runs (patch the spec), delete finished runs (spec.history, spec.ttlAfterFinished) and Events past
  their dedupe window, and write status (update on the status subresource, with the version read).
- Jobs: one per step attempt (create), read and watched (get, list, watch), deleted when a run ends, and
  a finished run's all at once (deletecollection, spec.history.jobsAfterFinished).
- pods: watched to notice a deleted step pod (list, watch), deleted with a cancelled attempt, and the
  log tail read (pods/log get) for a failed attempt's message.
- Secrets: a run state too large for its step pod's annotation, mounted into the pod (create, get to
  check the owner, delete).
- core Events: what `kubectl describe` shows (create).
*/}}
{{- define "kubestep.operatorRules" -}}
- apiGroups: ["kubestep.dev"]
  resources: ["workflows"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubestep.dev"]
  resources: ["events"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["kubestep.dev"]
  resources: ["workflowruns"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["kubestep.dev"]
  resources: ["workflows/status", "events/status", "workflowruns/status"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The operator's arguments: the namespaces it manages (none: all), its health endpoint, leader election.
*/}}
{{- define "kubestep.operatorArgs" -}}
- operator
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
- --metrics-port={{ .Values.health.port }}
- --metrics-address={{ .Values.health.address }}
- --dedupe-window={{ .Values.dedupeWindow }}
{{- if .Values.leaderElection.enabled }}
- --leader-elect
- --leader-elect-lease-duration=15s
- --leader-elect-renew-deadline=10s
- --leader-elect-retry-period=2s
{{- end }}
{{- if .Values.verbose }}
- --verbose
{{- end }}
{{- end }}
