{{/* Names are cut at 63 characters: some Kubernetes name fields are DNS labels. */}}
{{- define "broker-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "broker-gateway.fullname" -}}
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

{{- define "broker-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "broker-gateway.labels" -}}
app.kubernetes.io/name: {{ include "broker-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "broker-gateway.versionLabels" . }}
{{- end -}}

{{- define "broker-gateway.versionLabels" -}}
helm.sh/chart: {{ include "broker-gateway.chart" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The serving pods. The manifests Job's pods carry another component, so the Service,
PDB and spread constraints never select them. */}}
{{- define "broker-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "broker-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "broker-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "broker-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "broker-gateway.secretName" -}}
{{- .Values.existingSecret | default (include "broker-gateway.fullname" .) -}}
{{- end -}}

{{/* The chart's Secret data (base64), computed once per render and memoized in .Values, so
the Secret and the checksum/secret annotation agree. A value given wins; else the key of the
Secret already in the cluster (lookup: live installs and upgrades only, empty under `helm
template`); else a new random value. */}}
{{- define "broker-gateway.secretData" -}}
{{- if not (hasKey .Values "__secretData") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "broker-gateway.fullname" .) -}}
{{- $old := dig "data" dict $existing -}}
{{- $data := dict -}}
{{- $_ := set $data "receipt-secret" (include "broker-gateway.keep" (list .Values.receiptSecret $old "receipt-secret")) -}}
{{- if and .Values.auth.enabled .Values.auth.hs256.enabled -}}
{{- $_ := set $data "hs256-secret" (include "broker-gateway.keep" (list .Values.auth.hs256.secret $old "hs256-secret")) -}}
{{- end -}}
{{- if and .Values.auth.enabled .Values.auth.publicKeys.enabled -}}
{{- $_ := set $data "public-keys.pem" (required "auth.publicKeys.pem: PEM public keys are required when auth.publicKeys.enabled (or use existingSecret)" .Values.auth.publicKeys.pem | b64enc) -}}
{{- end -}}
{{- if and .Values.auth.enabled .Values.auth.apiKeys.enabled -}}
{{- $_ := set $data "api-keys.yaml" (required "auth.apiKeys.yaml: the API keys YAML is required when auth.apiKeys.enabled (or use existingSecret)" .Values.auth.apiKeys.yaml | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "__secretData" $data -}}
{{- end -}}
{{- toYaml .Values.__secretData -}}
{{- end -}}

{{/* (list value existingData key): the value, else the cluster's, else a random one. */}}
{{- define "broker-gateway.keep" -}}
{{- $value := index . 0 -}}
{{- $old := index . 1 -}}
{{- $key := index . 2 -}}
{{- if $value -}}
{{- $value | b64enc -}}
{{- else if hasKey $old $key -}}
{{- index $old $key -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Refuses values that contradict each other, naming them. */}}
{{- define "broker-gateway.validate" -}}
{{- $owned := list "host" "port" "clusters" "auth_enabled" "receipt_secret" "auth_hs256_secret" "auth_public_keys_file" "auth_api_keys_file" "shutdown_grace_s" "shutdown_delay_s" -}}
{{- range $key, $_ := .Values.config -}}
{{- if has $key $owned -}}
{{- fail (printf "config.%s: set by the chart (see README.md), remove it from config" $key) -}}
{{- end -}}
{{- end -}}
{{- if .Values.existingSecret -}}
{{- range $path, $value := dict "receiptSecret" .Values.receiptSecret "auth.hs256.secret" .Values.auth.hs256.secret "auth.publicKeys.pem" .Values.auth.publicKeys.pem "auth.apiKeys.yaml" .Values.auth.apiKeys.yaml -}}
{{- if $value -}}
{{- fail (printf "%s: must be empty with existingSecret (the key lives in Secret %s)" $path $.Values.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.manifests.enabled (not .Values.manifests.files) (not .Values.manifests.existingConfigMap) -}}
{{- fail "manifests.enabled: give manifests.files or manifests.existingConfigMap" -}}
{{- end -}}
{{- if and .Values.manifests.files .Values.manifests.existingConfigMap -}}
{{- fail "manifests.files and manifests.existingConfigMap: give one, not both" -}}
{{- end -}}
{{- end -}}

{{/* The Apache Pulsar chart's fullname for pulsar.releaseName (its pulsar.fullname helper). */}}
{{- define "broker-gateway.pulsarFullname" -}}
{{- $p := .Values.pulsar -}}
{{- if $p.fullnameOverride -}}
{{- $p.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "pulsar" $p.releaseName -}}
{{- $p.releaseName | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pulsar" $p.releaseName | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* pulsar.clusters, or the one cluster of the Apache Pulsar release, as a JSON list. */}}
{{- define "broker-gateway.clusters" -}}
{{- $p := .Values.pulsar -}}
{{- if $p.clusters -}}
{{- toJson $p.clusters -}}
{{- else -}}
{{- $fullname := include "broker-gateway.pulsarFullname" . -}}
{{- $host := printf "%s-%s" $fullname $p.via -}}
{{- if $p.namespace -}}
{{- $host = printf "%s.%s.svc" $host $p.namespace -}}
{{- end -}}
{{- $adminPort := ternary 8080 80 (eq $p.via "broker") -}}
{{- $cluster := dict "name" ($p.clusterName | default $fullname) "serviceUrl" (printf "pulsar://%s:6650" $host) "adminUrl" (printf "http://%s:%d" $host $adminPort) -}}
{{- if $p.tokenSecret.name -}}
{{- $_ := set $cluster "tokenSecret" $p.tokenSecret -}}
{{- end -}}
{{- list $cluster | toJson -}}
{{- end -}}
{{- end -}}

{{/* Env shared by the gateway and the manifests Job. Pulsar tokens come first, from their
Secrets, so GATEWAY_CLUSTERS can refer to them as $(PULSAR_TOKEN_n): Kubernetes expands
them, and no token is written into a ConfigMap or the pod spec. */}}
{{- define "broker-gateway.env" -}}
{{- $clusters := list -}}
{{- range $i, $c := include "broker-gateway.clusters" . | fromJsonArray -}}
{{- $cluster := dict "name" $c.name "service_url" $c.serviceUrl "admin_url" $c.adminUrl -}}
{{- if and $c.tokenSecret $c.tokenSecret.name }}
- name: PULSAR_TOKEN_{{ $i }}
  valueFrom:
    secretKeyRef:
      name: {{ $c.tokenSecret.name }}
      key: {{ $c.tokenSecret.key | default "TOKEN" }}
{{- $_ := set $cluster "token" (printf "$(PULSAR_TOKEN_%d)" $i) -}}
{{- end -}}
{{- $clusters = append $clusters $cluster -}}
{{- end }}
- name: GATEWAY_CLUSTERS
  value: {{ toJson $clusters | toJson }}
- name: GATEWAY_HOST
  value: "0.0.0.0"
- name: GATEWAY_PORT
  value: "8000"
- name: GATEWAY_SHUTDOWN_DELAY_S
  value: {{ .Values.shutdownDelaySeconds | quote }}
- name: GATEWAY_SHUTDOWN_GRACE_S
  value: {{ .Values.shutdownGraceSeconds | int | quote }}
- name: GATEWAY_AUTH_ENABLED
  value: {{ .Values.auth.enabled | quote }}
- name: GATEWAY_RECEIPT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "broker-gateway.secretName" . }}
      key: receipt-secret
{{- if .Values.auth.enabled }}
{{- if .Values.auth.hs256.enabled }}
- name: GATEWAY_AUTH_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "broker-gateway.secretName" . }}
      key: hs256-secret
{{- end }}
{{- if .Values.auth.publicKeys.enabled }}
- name: GATEWAY_AUTH_PUBLIC_KEYS_FILE
  value: /etc/broker-gateway/auth/public-keys.pem
{{- end }}
{{- if .Values.auth.apiKeys.enabled }}
- name: GATEWAY_AUTH_API_KEYS_FILE
  value: /etc/broker-gateway/auth/api-keys.yaml
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "broker-gateway.authFiles" -}}
{{- if .Values.auth.enabled -}}
{{- if .Values.auth.publicKeys.enabled }}
- key: public-keys.pem
  path: public-keys.pem
{{- end }}
{{- if .Values.auth.apiKeys.enabled }}
- key: api-keys.yaml
  path: api-keys.yaml
{{- end }}
{{- end -}}
{{- end -}}

{{/* Volumes and mounts shared by the gateway and the manifests Job: /tmp (the root
filesystem is read-only) and the key files. */}}
{{- define "broker-gateway.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with include "broker-gateway.authFiles" . }}
- name: auth
  secret:
    secretName: {{ include "broker-gateway.secretName" $ }}
    defaultMode: 0440
    items:
{{- . | trim | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "broker-gateway.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "broker-gateway.authFiles" . }}
- name: auth
  mountPath: /etc/broker-gateway/auth
  readOnly: true
{{- end }}
{{- end -}}

{{- define "broker-gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "broker-gateway.securityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}
