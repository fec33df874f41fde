{{/* The chart name, cut to 63 characters. */}}
{{- define "sluiceway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects, cut to 63 characters. */}}
{{- define "sluiceway.fullname" -}}
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

{{/* Selector labels: never change after the first release. */}}
{{- define "sluiceway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluiceway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "sluiceway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluiceway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluiceway
{{- end }}

{{/* The serving image. */}}
{{- define "sluiceway.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The ServiceAccount the Ray pods run as. */}}
{{- define "sluiceway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluiceway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The environment variable the auth token reaches the ingress in. */}}
{{- define "sluiceway.authTokenEnv" -}}
SLUICEWAY_AUTH_TOKEN
{{- end }}

{{/* Where the artifact cache lives in every pod (replicas and the fetcher fill it). */}}
{{- define "sluiceway.cacheDir" -}}
/var/cache/sluiceway/artifacts
{{- end }}

{{/* The serving config as the application receives it: the `serving` values, plus the
auth token's variable when auth is on. */}}
{{- define "sluiceway.servingConfig" -}}
{{- $serving := deepCopy .Values.serving }}
{{- if .Values.auth.enabled }}
{{- $_ := set $serving "auth" (dict "token_env" (include "sluiceway.authTokenEnv" .)) }}
{{- end }}
{{- toYaml $serving }}
{{- end }}

{{/*
The Serve application (serveConfigV2): the serving config without its variants as args (a
change restarts every replica), each deployment's share of the variants as its user_config
(a change reconfigures the running replicas in place: a rollout step restarts nothing).
serving.server.application_config builds the same from a serving config.
*/}}
{{- define "sluiceway.serveApplication" -}}
{{- $serving := include "sluiceway.servingConfig" . | fromYaml }}
{{- $args := deepCopy $serving }}
{{- $variants := dict }}
{{- range $name, $model := $args.models }}
{{- $_ := set $variants $name (get $model "variants") }}
{{- $_ := unset $model "variants" }}
{{- end }}
{{- $deployments := list (dict "name" "ingress" "user_config" (dict "variants" $variants)) }}
{{- range $name, $model := $serving.models }}
{{- range $pool := $model.routing.pools }}
{{- $artifacts := dict }}
{{- range $variant, $spec := $model.variants }}
{{- $_ := set $artifacts $variant (get $spec.artifacts $pool) }}
{{- end }}
{{- $user := dict "artifacts" $artifacts }}
{{- $deployments = append $deployments (dict "name" (printf "%s-%s" $name $pool) "user_config" $user) }}
{{- end }}
{{- end }}
name: sluiceway
route_prefix: /
import_path: serving.entrypoint:app
args:
  {{- toYaml $args | nindent 2 }}
deployments:
  {{- toYaml $deployments | nindent 2 }}
{{- end }}

{{/* Pod-level settings shared by the head and every worker group. */}}
{{- define "sluiceway.podSpec" -}}
serviceAccountName: {{ include "sluiceway.serviceAccountName" . | quote }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir: {sizeLimit: {{ .Values.tmpSizeLimit | quote }}}
  - name: artifact-cache
    emptyDir: {sizeLimit: {{ .Values.artifacts.fetch.cacheSizeLimit | quote }}}
  {{- if .Values.artifacts.existingClaim }}
  - name: artifacts
    persistentVolumeClaim: {claimName: {{ .Values.artifacts.existingClaim | quote }}, readOnly: true}
  {{- end }}
  {{- if .Values.artifacts.fetch.enabled }}
  - name: serving-config
    configMap: {name: {{ printf "%s-serving" (include "sluiceway.fullname" .) | quote }}}
  {{- end }}
{{- end }}

{{/* Container-level settings shared by every Ray container. */}}
{{- define "sluiceway.container" -}}
image: {{ include "sluiceway.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
env:
  {{- /* serving/server.py RAY_ENV (tests/charts/test_chart.py keeps them equal) */}}
  - {name: RAY_USAGE_STATS_ENABLED, value: "0"}
  - {name: RAY_max_direct_call_object_size, value: "1048576"}
  - {name: RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S, value: "0.05"}
  - {name: RAY_SERVE_ENABLE_HA_PROXY, value: "1"}
  - {name: RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, value: "5"}
  - {name: RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT, value: "1"}
  - {name: RAY_SERVE_THROUGHPUT_OPTIMIZED, value: "1"}
  - {name: RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S, value: "60"}
  - {name: RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S, value: "30"}
  - {name: SLUICEWAY_ARTIFACT_CACHE, value: {{ include "sluiceway.cacheDir" . | quote }}}
  {{- if .Values.auth.enabled }}
  - name: {{ include "sluiceway.authTokenEnv" . }}
    valueFrom:
      secretKeyRef:
        name: {{ required "auth.existingSecret is required when auth.enabled is true: name the Secret holding the bearer token" .Values.auth.existingSecret | quote }}
        key: {{ .Values.auth.secretKey | quote }}
  {{- end }}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
  - {name: artifact-cache, mountPath: {{ include "sluiceway.cacheDir" . | quote }}}
  {{- if .Values.artifacts.existingClaim }}
  - {name: artifacts, mountPath: {{ .Values.artifacts.mountPath | quote }}, readOnly: true}
  {{- end }}
{{- end }}
