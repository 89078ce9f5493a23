{{/* The StatefulSet and headless Service of a worker component (stage or expert). Pod i reads
its share of the topology from the topology ConfigMap by its ordinal, so one StatefulSet holds
every stage (or every expert shard):
(dict "root" $ "component" "stage" "values" .Values.stage "replicas" 2 "healthService" NAME "script" SH). */}}
{{- define "deltaserve.workerStatefulSet" -}}
{{- $root := .root }}
{{- $values := .values }}
{{- $ctx := dict "root" $root "component" .component "values" $values }}
{{- $name := include "deltaserve.componentName" $ctx }}
{{- $gpu := gt (int $values.gpus) 0 }}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "deltaserve.labels" $ctx | nindent 4 }}
    deltaserve.io/scrape: "true"
    deltaserve.io/job: deltaserve-{{ .component }}
spec:
  # Headless: peers address each pod by name (<name>-<i>.<name>...). Names resolve before the
  # pods are ready, because a stage only opens its port once its own peers answer.
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "deltaserve.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    - name: metrics
      port: {{ $values.metricsPort }}
      targetPort: metrics
      protocol: TCP
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  labels:
    {{- include "deltaserve.labels" $ctx | nindent 4 }}
spec:
  serviceName: {{ $name }}
  replicas: {{ .replicas }}
  # Every pod starts at once: a stage waits for the next stage, its expert shards and the store,
  # so ordered start-up would never finish.
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels:
      {{- include "deltaserve.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "deltaserve.labels" $ctx | nindent 8 }}
      annotations:
        {{- include "deltaserve.podAnnotations" $ctx | nindent 8 }}
    spec:
      {{- include "deltaserve.podCommon" $root | nindent 6 }}
      # On SIGTERM health turns NOT_SERVING and calls in flight get --drain-seconds.
      terminationGracePeriodSeconds: {{ add (include "deltaserve.drainSeconds" $ctx) 15 }}
      {{- with (include "deltaserve.affinity" $ctx) }}{{ . | trim | nindent 6 }}{{- end }}
      {{- with (include "deltaserve.scheduling" (dict "root" $root "values" $values "gpu" $gpu)) }}{{ . | trim | nindent 6 }}{{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "deltaserve.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            - /bin/sh
            - -c
          args:
            - |
              {{- .script | nindent 14 }}
            - {{ .component }}
            {{- include "deltaserve.engineArgs" $ctx | nindent 12 }}
            {{- include "deltaserve.serverArgs" $ctx | nindent 12 }}
            {{- range .extraArgs }}
            - {{ . | quote }}
            {{- end }}
            {{- range $values.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- if $gpu }}
            {{- with (include "deltaserve.ncclEnv" $root) }}{{ . | trim | nindent 12 }}{{- end }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $values.grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $values.metricsPort }}
              protocol: TCP
          {{- include "deltaserve.grpcProbes" (dict "root" $root "port" $values.grpcPort "service" .healthService) | nindent 10 }}
          {{- include "deltaserve.resources" $ctx | nindent 10 }}
          {{- include "deltaserve.containerSecurityContext" $root | nindent 10 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: topology
              mountPath: /etc/deltaserve/topology
              readOnly: true
            {{- if $gpu }}
            - name: dshm
              mountPath: /dev/shm
            {{- end }}
            {{- with (include "deltaserve.modelVolumeMount" $root) }}{{ . | trim | nindent 12 }}{{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        - name: topology
          configMap:
            name: {{ include "deltaserve.componentName" (dict "root" $root "component" "topology") }}
        {{- if $gpu }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $root.Values.gpu.shmSizeLimit }}
        {{- end }}
        {{- with (include "deltaserve.modelVolume" $root) }}{{ . | trim | nindent 8 }}{{- end }}
{{- end }}
