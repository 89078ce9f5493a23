{{/* Names, labels, addresses and the pod fragments every deltaserve component shares. */}}

{{- define "deltaserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-deltaserve, or the release name alone when it already contains the chart name. */}}
{{- define "deltaserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 38 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's objects: (dict "root" $ "component" "router"). Kept under 63
characters with room for a StatefulSet's pod suffix. */}}
{{- define "deltaserve.componentName" -}}
{{- printf "%s-%s" (include "deltaserve.fullname" .root) .component }}
{{- end }}

{{- define "deltaserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release; with "component", the component label too. */}}
{{- define "deltaserve.labels" -}}
helm.sh/chart: {{ include "deltaserve.chart" .root }}
{{ include "deltaserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: deltaserve
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select one component's pods: (dict "root" $ "component" "stage"). Without a
component they select every pod of the release. */}}
{{- define "deltaserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deltaserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "deltaserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "deltaserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "deltaserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The fully qualified DNS name of a Service of this release: (dict "root" $ "service" NAME). */}}
{{- define "deltaserve.serviceHost" -}}
{{- printf "%s.%s.svc.%s" .service .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{/* host:port of StatefulSet pod `ordinal` of a worker component behind its headless Service:
(dict "root" $ "component" "stage" "ordinal" 0 "port" 50061). */}}
{{- define "deltaserve.podAddress" -}}
{{- $service := include "deltaserve.componentName" (dict "root" .root "component" .component) }}
{{- printf "%s-%d.%s:%d" $service (int .ordinal) (include "deltaserve.serviceHost" (dict "root" .root "service" $service)) (int .port) }}
{{- end }}

{{- define "deltaserve.sessionStoreAddress" -}}
{{- if .Values.sessionStore.enabled }}
{{- include "deltaserve.podAddress" (dict "root" . "component" "session-store" "ordinal" 0 "port" .Values.sessionStore.grpcPort) }}
{{- end }}
{{- end }}

{{- define "deltaserve.expertWorkers" -}}
{{- $root := . }}
{{- $addresses := list }}
{{- range $j, $shard := .Values.topology.expertShards }}
{{- $addresses = append $addresses (include "deltaserve.podAddress" (dict "root" $root "component" "expert" "ordinal" $j "port" $root.Values.expert.grpcPort)) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/* The gRPC server flags of a component: (dict "root" $ "values" .Values.router). The
component's `server` block overrides the release-wide one key by key. */}}
{{- define "deltaserve.serverArgs" -}}
{{- $server := merge (deepCopy (default dict .values.server)) .root.Values.server -}}
- --listen=0.0.0.0:{{ .values.grpcPort }}
- --metrics-listen=0.0.0.0:{{ .values.metricsPort }}
- --log-level={{ $server.logLevel }}
- --drain-seconds={{ $server.drainSeconds }}
- --peer-wait-ms={{ int64 $server.peerWaitMs }}
- --call-timeout-ms={{ int64 $server.callTimeoutMs }}
- --max-receive-message-bytes={{ int64 $server.maxReceiveMessageBytes }}
- --max-send-message-bytes={{ int64 $server.maxSendMessageBytes }}
- --max-metadata-bytes={{ int64 $server.maxMetadataBytes }}
- --max-concurrent-streams={{ int64 $server.maxConcurrentStreams }}
- --keepalive-min-ping-interval-ms={{ int64 $server.keepaliveMinPingIntervalMs }}
- --default-deadline-ms={{ int64 $server.defaultDeadlineMs }}
{{- end }}

{{/* A component's effective --drain-seconds. */}}
{{- define "deltaserve.drainSeconds" -}}
{{- $server := merge (deepCopy (default dict .values.server)) .root.Values.server }}
{{- int64 $server.drainSeconds }}
{{- end }}

{{- define "deltaserve.engineArgs" -}}
- --device={{ .root.Values.model.device }}
- --threads={{ int64 .values.threads }}
{{- range .root.Values.model.engineArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* gRPC startup, readiness and liveness probes on the component's own health service name:
(dict "root" $ "port" 50061 "service" "deltaserve.internal.v1.StageWorker"). */}}
{{- define "deltaserve.grpcProbes" -}}
{{- $probes := .root.Values.probes -}}
startupProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  periodSeconds: {{ $probes.startup.periodSeconds }}
  failureThreshold: {{ $probes.startup.failureThreshold }}
  timeoutSeconds: {{ $probes.timeoutSeconds }}
readinessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  periodSeconds: {{ $probes.readiness.periodSeconds }}
  failureThreshold: {{ $probes.readiness.failureThreshold }}
  timeoutSeconds: {{ $probes.timeoutSeconds }}
livenessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  periodSeconds: {{ $probes.liveness.periodSeconds }}
  failureThreshold: {{ $probes.liveness.failureThreshold }}
  timeoutSeconds: {{ $probes.timeoutSeconds }}
{{- end }}

{{/* Affinity of a component: its own `affinity` when set, otherwise pod anti-affinity among
its pods (soft: preferred, hard: required): (dict "root" $ "component" "stage" "values" .Values.stage). */}}
{{- define "deltaserve.affinity" -}}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else if eq .values.antiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: {{ .values.antiAffinityTopologyKey }}
          labelSelector:
            matchLabels:
              {{- include "deltaserve.selectorLabels" . | nindent 14 }}
{{- else if eq .values.antiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: {{ .values.antiAffinityTopologyKey }}
        labelSelector:
          matchLabels:
            {{- include "deltaserve.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}

{{/* nodeSelector, tolerations and priority class of a component; GPU pods add gpu.tolerations:
(dict "root" $ "values" .Values.stage "gpu" true). */}}
{{- define "deltaserve.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := .values.tolerations }}
{{- if .gpu }}
{{- $tolerations = concat .values.tolerations .root.Values.gpu.tolerations }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Pod annotations: the topology checksum (pods restart when it changes; not for the session
store, which reads no topology and would lose its memory tier), Prometheus discovery and the
component's own: (dict "root" $ "values" .Values.stage "path" "/metrics"). */}}
{{- define "deltaserve.podAnnotations" -}}
{{- if ne .component "session-store" }}
checksum/topology: {{ include (print .root.Template.BasePath "/topology-configmap.yaml") .root | sha256sum }}
{{- end }}
{{- if .root.Values.monitoring.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .values.metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod spec fields every deltaserve pod shares. */}}
{{- define "deltaserve.podCommon" -}}
serviceAccountName: {{ include "deltaserve.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "deltaserve.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* Volume and mount of the model checkpoint, when model.volume is set. */}}
{{- define "deltaserve.modelVolume" -}}
{{- if .Values.model.volume }}
- name: model
  {{- toYaml .Values.model.volume | nindent 2 }}
{{- end }}
{{- end }}

{{- define "deltaserve.modelVolumeMount" -}}
{{- if .Values.model.volume }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* GPU resources merged into a component's resources: (dict "root" $ "values" .Values.stage). */}}
{{- define "deltaserve.resources" -}}
{{- $resources := deepCopy .values.resources }}
{{- if gt (int (default 0 .values.gpus)) 0 }}
{{- $gpu := dict .root.Values.gpu.resourceName (int .values.gpus) }}
{{- $_ := set $resources "requests" (merge (default dict $resources.requests) $gpu) }}
{{- $_ := set $resources "limits" (merge (default dict $resources.limits) $gpu) }}
{{- end -}}
resources:
  {{- toYaml $resources | nindent 2 }}
{{- end }}

{{/* NCCL environment and the /dev/shm volume of a GPU worker. */}}
{{- define "deltaserve.ncclEnv" -}}
{{- range $name, $value := .Values.gpu.ncclEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Checks of the values that the schema cannot express; fails the render with the reason. */}}
{{- define "deltaserve.validate" -}}
{{- $stages := .Values.topology.stages }}
{{- if eq (len $stages) 0 }}
{{- fail "topology.stages: at least one stage is needed" }}
{{- end }}
{{- $next := 0 }}
{{- range $i, $stage := $stages }}
{{- $bounds := splitList "-" $stage.layers }}
{{- $first := atoi (index $bounds 0) }}
{{- $last := atoi (index $bounds 1) }}
{{- if ne $first $next }}
{{- fail (printf "topology.stages[%d].layers %q must start at layer %d (stages start at 0 and follow on without gaps)" $i $stage.layers $next) }}
{{- end }}
{{- if lt $last $first }}
{{- fail (printf "topology.stages[%d].layers %q ends before it starts" $i $stage.layers) }}
{{- end }}
{{- $next = add1 $last }}
{{- end }}
{{- $next = 0 }}
{{- range $j, $shard := .Values.topology.expertShards }}
{{- $bounds := splitList "-" $shard.experts }}
{{- $first := atoi (index $bounds 0) }}
{{- $last := atoi (index $bounds 1) }}
{{- if ne $first $next }}
{{- fail (printf "topology.expertShards[%d].experts %q must start at expert %d (shards start at 0 and tile the experts)" $j $shard.experts $next) }}
{{- end }}
{{- if lt $last $first }}
{{- fail (printf "topology.expertShards[%d].experts %q ends before it starts" $j $shard.experts) }}
{{- end }}
{{- $next = add1 $last }}
{{- end }}
{{- $gpuWorkers := or (gt (int .Values.stage.gpus) 0) (and (gt (int .Values.expert.gpus) 0) (gt (len .Values.topology.expertShards) 0)) }}
{{- if and $gpuWorkers (eq .Values.model.device "cpu") }}
{{- fail "stage.gpus or expert.gpus is set but model.device is cpu: set model.device=cuda" }}
{{- end }}
{{- if and (hasPrefix "cuda" .Values.model.device) (eq (int .Values.stage.gpus) 0) }}
{{- fail "model.device is cuda but stage.gpus is 0: GPU workers need stage.gpus (and expert.gpus) of at least 1" }}
{{- end }}
{{- if and (hasPrefix "cuda" .Values.model.device) (gt (len .Values.topology.expertShards) 0) (eq (int .Values.expert.gpus) 0) }}
{{- fail "model.device is cuda but expert.gpus is 0 while expert shards exist" }}
{{- end }}
{{- if gt (int .Values.router.autoscaling.minReplicas) (int .Values.router.autoscaling.maxReplicas) }}
{{- fail "router.autoscaling.minReplicas is above maxReplicas" }}
{{- end }}
{{- if and .Values.envoy.enabled (ne .Values.router.service.type "ClusterIP") }}
{{- fail "router.service.type must be ClusterIP while envoy.enabled: clients reach the router only through Envoy" }}
{{- end }}
{{- if and (not (hasPrefix "random:" .Values.model.source)) (not .Values.model.volume) }}
{{- if not (hasPrefix "/" .Values.model.source) }}
{{- fail (printf "model.source %q is neither random:<preset> nor an absolute path in the pods" .Values.model.source) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The router's effective --max-concurrent-streams, which Envoy keeps to per upstream connection. */}}
{{- define "deltaserve.routerMaxConcurrentStreams" -}}
{{- $server := merge (deepCopy (default dict .Values.router.server)) .Values.server }}
{{- int64 $server.maxConcurrentStreams }}
{{- end }}

{{/* The router's --pipeline-steps: router.scheduler.pipelineSteps, or one per stage (at most 64). */}}
{{- define "deltaserve.pipelineSteps" -}}
{{- int64 (.Values.router.scheduler.pipelineSteps | default (min 64 (len .Values.topology.stages))) }}
{{- end }}

{{/* A stage's NCCL links to the next (--nccl-output-links): stage.ncclOutputLinks, or one per step
that may be in flight below it, which is every router's steps (the autoscaler's most routers, and
the one a rollout surges: router-deployment.yaml's maxSurge), at most 64. */}}
{{- define "deltaserve.stageOutputLinks" -}}
{{- $routers := add1 (ternary .Values.router.autoscaling.maxReplicas .Values.router.replicas .Values.router.autoscaling.enabled) }}
{{- int64 (.Values.stage.ncclOutputLinks | default (min 64 (mul (int64 $routers) (int64 (include "deltaserve.pipelineSteps" .))))) }}
{{- end }}
