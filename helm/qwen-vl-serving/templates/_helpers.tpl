{{/* Names and labels. */}}
{{- define "qwen-vl-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RayService names become Ray cluster and pod name prefixes: keep room for KubeRay's suffixes. */}}
{{- define "qwen-vl-serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qwen-vl-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qwen-vl-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-vl-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qwen-vl-serving.labels" -}}
helm.sh/chart: {{ include "qwen-vl-serving.chart" . }}
{{ include "qwen-vl-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "qwen-vl-serving.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Ray version in the image (pyproject.toml pins ray[serve]; a test keeps them equal). */}}
{{- define "qwen-vl-serving.rayVersion" -}}2.60.0{{- end }}

{{/*
Settings read from the serving config. The defaults here are engine/config.py's (pydantic)
defaults, for keys a config leaves out; tests/helm/test_chart.py renders without them and checks
each against the pydantic model, so they cannot drift.
*/}}
{{- define "qwen-vl-serving.server" -}}
{{- $s := default dict .Values.serving.server -}}
{{- toJson (dict
  "port" (int (default 8000 $s.port))
  "metricsPort" (int (default 8080 $s.metrics_port))
  "appName" (default "qwen-vl" $s.app_name)
  "proxyLocation" (default "EveryNode" $s.proxy_location)) -}}
{{- end }}

{{- define "qwen-vl-serving.deployment" -}}
{{- $d := default dict .Values.serving.deployment -}}
{{- toJson (dict
  "device" (default "cpu" $d.device)
  "tensorParallelSize" (int (default 1 $d.tensor_parallel_size))
  "autoscaling" (not (empty $d.autoscaling))
  "drainTimeoutS" (float64 (default 60 $d.drain_timeout_s))) -}}
{{- end }}

{{/* The variable the ingress reads API keys from ("" when the config switches keys off). */}}
{{- define "qwen-vl-serving.apiKeysEnv" -}}
{{- $a := default dict .Values.serving.access -}}
{{- if hasKey $a "api_keys_env" }}{{ $a.api_keys_env | default "" }}{{ else }}QWEN_VL_API_KEYS{{ end -}}
{{- end }}

{{/* The Secret holding chart-created secrets. */}}
{{- define "qwen-vl-serving.secretName" -}}
{{- include "qwen-vl-serving.fullname" . }}-secrets
{{- end }}

{{/* secretKeyRef of one entry of .Values.secrets ("" when it is not configured). */}}
{{- define "qwen-vl-serving.secretRef" -}}
{{- $s := index .root.Values.secrets .name -}}
{{- if $s.existingSecret -}}
{{- toJson (dict "name" $s.existingSecret "key" $s.key) -}}
{{- else if $s.value -}}
{{- toJson (dict "name" (include "qwen-vl-serving.secretName" .root) "key" $s.key) -}}
{{- end -}}
{{- end }}

{{/* Environment shared by every Ray container and the download init container. */}}
{{- define "qwen-vl-serving.env" -}}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.modelCache.mountPath | quote }}
- name: HF_HUB_DISABLE_TELEMETRY
  value: "1"
{{- /* Ray Serve's fast paths (serving.server.ray_*): read by every Ray process at start, so
  they go on every Ray pod, as qwen-vl serve puts them on every node it starts. */}}
{{- $srv := default dict .Values.serving.server }}
{{- if $srv.ray_throughput_optimized }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
{{- end }}
{{- /* How often Ray's controller checks each node's HTTP proxy (server.proxy_check_s). */}}
- name: RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S
  value: {{ ternary $srv.proxy_check_s 2 (hasKey $srv "proxy_check_s") | toString | quote }}
{{- /* HAProxy is on unless the serving config turns it off (ServerSettings' default). */}}
{{- if (ternary $srv.ray_ha_proxy true (hasKey $srv "ray_ha_proxy")) }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
{{- /* How long a stopping replica stays reachable for HAProxy (replica_deregistration_s). */}}
- name: RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
  value: {{ ternary $srv.replica_deregistration_s 5 (hasKey $srv "replica_deregistration_s") | toString | quote }}
{{- /* A connection that closed before any response byte is retried on another replica. */}}
- name: RAY_SERVE_HAPROXY_RETRY_ON
  value: "conn-failure empty-response"
{{- /* Ray starts HAProxy through this package's qwen-vl-haproxy (the image installs it in
  /usr/local/bin): HAProxy's own answers become the API's error JSON (launch.proxy.pages). */}}
- name: RAY_SERVE_HAPROXY_BINARY_PATH
  value: "/usr/local/bin/qwen-vl-haproxy"
{{- end }}
{{- /* HAProxy hands each request body to the ingress request router, which routes on its
  media (serving.deployment.routing.image_affinity; ServingConfig.ray_env). */}}
{{- if ((default dict (default dict .Values.serving.deployment).routing).image_affinity) }}
- name: RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY
  value: "1"
{{- end }}
{{- with include "qwen-vl-serving.secretRef" (dict "root" . "name" "hfToken") }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef: {{ . }}
{{- end }}
{{- $keysEnv := include "qwen-vl-serving.apiKeysEnv" . }}
{{- with include "qwen-vl-serving.secretRef" (dict "root" . "name" "apiKeys") }}
{{- if not $keysEnv }}
{{- fail "secrets.apiKeys is set but serving.access.api_keys_env is empty: the API would ignore the keys. Name the variable (default QWEN_VL_API_KEYS) or drop secrets.apiKeys." }}
{{- end }}
- name: {{ $keysEnv }}
  valueFrom:
    secretKeyRef: {{ . }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A checkpoint directory as model.source (engine/checkpoint.py's is_local_path). */}}
{{- define "qwen-vl-serving.localSource" -}}
{{- $src := toString .Values.serving.model.source -}}
{{- if or (hasPrefix "/" $src) (hasPrefix "./" $src) (hasPrefix "../" $src) (hasPrefix "~" $src) }}true{{ end -}}
{{- end }}

{{/* Volumes of a Ray pod (.kind head or worker). The head mounts the model cache only for a
checkpoint-directory source (it checks config.json when building the application); for Hugging
Face ids it needs none, so a ReadWriteOnce claim is left to the single engine pod. */}}
{{- define "qwen-vl-serving.volumes" -}}
{{- $p := .root.Values.modelCache.persistence -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .root.Values.shm.sizeLimit }}
- name: model-cache
{{- if and $p.enabled (or (eq .kind "worker") (include "qwen-vl-serving.localSource" .root)) }}
  persistentVolumeClaim:
    claimName: {{ $p.existingClaim | default (printf "%s-model-cache" (include "qwen-vl-serving.fullname" .root)) }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: serving-config
  configMap:
    name: {{ include "qwen-vl-serving.fullname" .root }}-config
{{- end }}

{{- define "qwen-vl-serving.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
- name: serving-config
  mountPath: /etc/qwen-vl
  readOnly: true
{{- end }}

{{/* One Ray container; .kind is "head" or "worker", .group .Values.head or the worker group. */}}
{{- define "qwen-vl-serving.rayContainer" -}}
{{- $root := .root -}}
{{- $server := include "qwen-vl-serving.server" $root | fromJson -}}
{{- $dep := include "qwen-vl-serving.deployment" $root | fromJson -}}
- name: ray-{{ .kind }}
  image: {{ include "qwen-vl-serving.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  env:
    {{- include "qwen-vl-serving.env" $root | nindent 4 }}
  ports:
    {{- if eq .kind "head" }}
    - {containerPort: 6379, name: gcs-server}
    - {containerPort: 8265, name: dashboard}
    - {containerPort: 10001, name: client}
    {{- end }}
    - {containerPort: {{ $server.port }}, name: serve}
    - {containerPort: {{ $server.metricsPort }}, name: metrics}
  resources:
    {{- $res := deepCopy (default dict .group.resources) }}
    {{- if and (eq .kind "worker") (eq $dep.device "gpu") }}
    {{- range $k := list "limits" "requests" }}
    {{- $_ := set $res $k (merge (dict "nvidia.com/gpu" $dep.tensorParallelSize) (default dict (index $res $k))) }}
    {{- end }}
    {{- end }}
    {{- toYaml $res | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "qwen-vl-serving.volumeMounts" $root | nindent 4 }}
  {{- with $root.Values.probes }}
  startupProbe:
    httpGet: {{ include "qwen-vl-serving.rayHealth" $.kind }}
    {{- toYaml .startup | nindent 4 }}
  livenessProbe:
    httpGet: {{ include "qwen-vl-serving.rayHealth" $.kind }}
    {{- toYaml .liveness | nindent 4 }}
  readinessProbe:
    {{- if eq $.kind "head" }}
    httpGet: {{ include "qwen-vl-serving.rayHealth" $.kind }}
    {{- else }}
    httpGet: {path: /-/healthz, port: serve}
    {{- end }}
    {{- toYaml .readiness | nindent 4 }}
  {{- end }}
  lifecycle:
    preStop:
      exec:
        command: ["/bin/sh", "-c", "sleep {{ $root.Values.gracefulShutdown.preStopSleepSeconds }}"]
{{- end }}

{{/* Ray's own health endpoints: GCS on the head (dashboard port), raylet on workers (agent). */}}
{{- define "qwen-vl-serving.rayHealth" -}}
{{- if eq . "head" -}}
{path: /api/gcs_healthz, port: dashboard}
{{- else -}}
{path: /api/local_raylet_healthz, port: 52365}
{{- end -}}
{{- end }}

{{/* Pod spec fields shared by head and workers (scheduling from .group). */}}
{{- define "qwen-vl-serving.podCommon" -}}
{{- with .root.Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{ end -}}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .root.Values.gracefulShutdown.terminationGracePeriodSeconds }}
volumes:
  {{- include "qwen-vl-serving.volumes" . | nindent 2 }}
{{- range $field := list "nodeSelector" "tolerations" "affinity" }}
{{- with index $.group $field }}
{{ $field }}:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qwen-vl-serving.podMetadata" -}}
labels:
  {{- include "qwen-vl-serving.selectorLabels" .root | nindent 2 }}
  app.kubernetes.io/component: ray-{{ .kind }}
  app.kubernetes.io/part-of: ray
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- /* No config checksum here: a pod template change makes KubeRay replace the whole Ray
cluster, while a serving change is applied in place through serveConfigV2. */}}
{{- with .root.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* rayStartParams: ours, then the user's (string values, as KubeRay wants). */}}
{{- define "qwen-vl-serving.rayStartParams" -}}
{{- $server := include "qwen-vl-serving.server" .root | fromJson -}}
{{- $p := dict "metrics-export-port" (toString $server.metricsPort) -}}
{{- if eq .kind "head" }}{{ $_ := set $p "dashboard-host" "0.0.0.0" }}{{ $_ := set $p "num-gpus" "0" }}{{ end -}}
{{- range $k, $v := .params }}{{ $_ := set $p $k (toString $v) }}{{ end -}}
{{- toYaml $p }}
{{- end }}
