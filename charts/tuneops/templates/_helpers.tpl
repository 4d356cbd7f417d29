{{/* Names, labels and lists shared by the templates. */}}

{{- define "tuneops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tuneops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tuneops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tuneops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tuneops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneops
{{- end -}}

{{- define "tuneops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tuneops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tuneops.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches, as a JSON list; empty means every namespace. */}}
{{- define "tuneops.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- .Values.watchNamespaces | uniq | toJson -}}
{{- else if eq .Values.rbac.scope "namespaced" -}}
{{- list .Release.Namespace | toJson -}}
{{- else -}}
{{- list | toJson -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does in a namespace. Derived from the code (operator/tuneops/kube, controller.py and
reconcile/): every kind it reads is listed and watched into its cache (get for the odd direct read); its own
resources are only read, and written through status; children are applied with server-side apply (create +
patch) and pruned (delete); Pods are only read (what a Pod serves is asked of its server); Secrets only read
by name, and only with rbac.readSecrets.
*/}}
{{- define "tuneops.namespaceRules" -}}
- apiGroups: ["tuneops.io"]
  resources: ["finetunedmodels", "quantizationjobs", "inferenceservices", "loraadapters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tuneops.io"]
  resources: ["finetunedmodels/status", "quantizationjobs/status", "inferenceservices/status", "loraadapters/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion; clusters with the OwnerReferencesPermissionEnforcement
# admission plugin only allow that to who may update the owner's finalizers.
- apiGroups: ["tuneops.io"]
  resources: ["finetunedmodels/finalizers", "quantizationjobs/finalizers", "inferenceservices/finalizers", "loraadapters/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The adapters readiness gate of serving Pods (a condition in their status; nothing else of a Pod is written).
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- if .Values.rbac.readSecrets }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end -}}

{{/* The Lease of leader election: created once, then read and renewed by name (create cannot be limited to a name). */}}
{{- define "tuneops.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "tuneops.fullname" . | quote }}]
  verbs: ["get", "update"]
{{- end -}}

{{/* The claim config.artifactRoot names (pvc://<claim>[/path]); only called when the chart creates it. */}}
{{- define "tuneops.artifactClaim" -}}
{{- $root := .Values.config.artifactRoot -}}
{{- if not (hasPrefix "pvc://" $root) -}}
{{- fail (printf "artifacts.claim.create needs config.artifactRoot to be pvc://<claim>[/path], got %q" $root) -}}
{{- end -}}
{{- $claim := trimPrefix "pvc://" $root | splitList "/" | first -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" $claim) -}}
{{- fail (printf "config.artifactRoot %q: %q is not a valid PersistentVolumeClaim name" $root $claim) -}}
{{- end -}}
{{- $claim -}}
{{- end -}}

{{/* Namespaces the artifact claim is created in, as a JSON list (Pods mount claims of their own namespace). */}}
{{- define "tuneops.artifactClaimNamespaces" -}}
{{- .Values.artifacts.claim.namespaces | default (include "tuneops.watchNamespaces" . | fromJsonArray) | default (list .Release.Namespace) | uniq | toJson -}}
{{- end -}}
