{{/*
Names. Kubernetes names are limited to 63 characters; the longest suffix
added below is "-coordinator" (12), so the prefix is cut at 50.
*/}}
{{- define "ringway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "ringway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ringway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource names, one place for all of them. */}}
{{- define "ringway.gateway.name" -}}{{ include "ringway.fullname" . }}-gateway{{- end }}
{{- define "ringway.gateway.peersName" -}}{{ include "ringway.fullname" . }}-peers{{- end }}
{{- define "ringway.api.name" -}}{{ include "ringway.fullname" . }}-api{{- end }}
{{- define "ringway.coordinator.name" -}}{{ include "ringway.fullname" . }}-coordinator{{- end }}
{{- define "ringway.redis.name" -}}{{ include "ringway.fullname" . }}-redis{{- end }}
{{- define "ringway.auth.name" -}}{{ include "ringway.fullname" . }}-auth{{- end }}
{{- define "ringway.metrics.name" -}}{{ include "ringway.fullname" . }}-metrics{{- end }}
{{- define "ringway.cluster.secretName" -}}{{ include "ringway.fullname" . }}-cluster{{- end }}
{{- define "ringway.cluster.tlsName" -}}{{ include "ringway.fullname" . }}-cluster-tls{{- end }}
{{- define "ringway.test.name" -}}{{ include "ringway.fullname" . }}-test{{- end }}
{{- define "ringway.dashboard.name" -}}{{ include "ringway.fullname" . }}-dashboard{{- end }}

{{/* Labels every resource carries. */}}
{{- define "ringway.labels" -}}
helm.sh/chart: {{ include "ringway.chart" . }}
{{ include "ringway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ringway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The release's selector labels (no component). */}}
{{- define "ringway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of one component: call with (dict "ctx" $ "component" "gateway").
*/}}
{{- define "ringway.componentSelectorLabels" -}}
{{ include "ringway.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ringway.componentLabels" -}}
{{ include "ringway.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ringway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ringway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ringway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The coordinator's address as the gateways dial it. */}}
{{- define "ringway.coordinator.address" -}}
{{- printf "%s:%d" (include "ringway.coordinator.name" .) (int .Values.coordinator.port) }}
{{- end }}

{{/*
The Redis URL without credentials: the embedded instance's, else redis.url.
*/}}
{{- define "ringway.redis.baseUrl" -}}
{{- if .Values.redis.embedded.enabled }}
{{- printf "redis://%s:6379/0" (include "ringway.redis.name" .) }}
{{- else }}
{{- if not .Values.redis.url }}
{{- fail "redis.url is required (redis://HOST:PORT/DB, rediss:// for TLS), or set redis.embedded.enabled=true to try Ringway out" }}
{{- end }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/*
The Redis URLs the binaries get, comma-separated: redis.url then
redis.extraUrls (the other seed nodes of a Redis Cluster, the other
Sentinels), each with redis.auth.username as its user. The password is
never in a URL: it is a mounted file (--redis-password-file).
*/}}
{{- define "ringway.redis.url" -}}
{{- $urls := list (include "ringway.redis.baseUrl" .) }}
{{- if not .Values.redis.embedded.enabled }}
{{- $urls = concat $urls .Values.redis.extraUrls }}
{{- end }}
{{- $out := list }}
{{- range $urls }}
{{- if and $.Values.redis.auth.existingSecret (contains "@" .) }}
{{- fail "redis.url and redis.extraUrls must not carry credentials when redis.auth.existingSecret is set" }}
{{- end }}
{{- if $.Values.redis.auth.username }}
{{- $parts := splitn "://" 2 . }}
{{- $out = append $out (printf "%s://%s@%s" $parts._0 $.Values.redis.auth.username $parts._1) }}
{{- else }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/* Checks the Redis settings against each other. */}}
{{- define "ringway.redis.check" -}}
{{- $r := .Values.redis }}
{{- if $r.embedded.enabled }}
{{- if ne $r.mode "standalone" }}
{{- fail "redis.embedded.enabled runs one standalone Redis: redis.mode must be standalone" }}
{{- end }}
{{- if $r.tls.existingSecret }}
{{- fail "redis.tls is for an external Redis (the embedded one has no TLS)" }}
{{- end }}
{{- end }}
{{- if and (eq $r.mode "standalone") $r.extraUrls }}
{{- fail "redis.extraUrls are for redis.mode cluster (seed nodes) or sentinel (Sentinels)" }}
{{- end }}
{{- if and (eq $r.mode "sentinel") (not $r.sentinelMaster) }}
{{- fail "redis.mode sentinel needs redis.sentinelMaster (the primary's name the Sentinels monitor)" }}
{{- end }}
{{- if and (ne $r.mode "sentinel") $r.sentinelMaster }}
{{- fail "redis.sentinelMaster is for redis.mode sentinel" }}
{{- end }}
{{- if and $r.tls.existingSecret (not (hasPrefix "rediss://" (include "ringway.redis.baseUrl" .))) }}
{{- fail "redis.tls needs rediss:// URLs" }}
{{- end }}
{{- if ne (empty $r.tls.certKey) (empty $r.tls.keyKey) }}
{{- fail "redis.tls.certKey and redis.tls.keyKey go together" }}
{{- end }}
{{- end }}

{{/* Where the Redis password and TLS files are mounted. */}}
{{- define "ringway.redis.authDir" -}}/etc/ringway/redis-auth{{- end }}
{{- define "ringway.redis.tlsDir" -}}/etc/ringway/redis-tls{{- end }}

{{/* Environment entries giving the binaries Redis. */}}
{{- define "ringway.redis.env" -}}
{{- include "ringway.redis.check" . }}
- name: RINGWAY_REDIS_URL
  value: {{ include "ringway.redis.url" . | quote }}
- name: RINGWAY_REDIS_MODE
  value: {{ .Values.redis.mode | quote }}
{{- with .Values.redis.sentinelMaster }}
- name: RINGWAY_REDIS_SENTINEL_MASTER
  value: {{ . | quote }}
{{- end }}
{{- if .Values.redis.waitReplicas }}
{{- if .Values.redis.embedded.enabled }}
{{- fail "redis.waitReplicas needs replicas: the embedded Redis has none" }}
{{- end }}
- name: RINGWAY_REDIS_WAIT_REPLICAS
  value: {{ .Values.redis.waitReplicas | quote }}
{{- end }}
{{- if .Values.redis.auth.existingSecret }}
- name: RINGWAY_REDIS_PASSWORD_FILE
  value: {{ printf "%s/%s" (include "ringway.redis.authDir" .) .Values.redis.auth.passwordKey | quote }}
{{- end }}
{{- with .Values.redis.tls }}
{{- if .existingSecret }}
{{- if .caKey }}
- name: RINGWAY_REDIS_CA_FILE
  value: {{ printf "%s/%s" (include "ringway.redis.tlsDir" $) .caKey | quote }}
{{- end }}
{{- if .certKey }}
- name: RINGWAY_REDIS_CLIENT_CERT
  value: {{ printf "%s/%s" (include "ringway.redis.tlsDir" $) .certKey | quote }}
- name: RINGWAY_REDIS_CLIENT_KEY
  value: {{ printf "%s/%s" (include "ringway.redis.tlsDir" $) .keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The mounts of the Redis password and TLS files (none without them). */}}
{{- define "ringway.redis.volumeMounts" -}}
{{- if .Values.redis.auth.existingSecret }}
- name: redis-auth
  mountPath: {{ include "ringway.redis.authDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.redis.tls.existingSecret }}
- name: redis-tls
  mountPath: {{ include "ringway.redis.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "ringway.redis.volumes" -}}
{{- if .Values.redis.auth.existingSecret }}
- name: redis-auth
  secret:
    secretName: {{ .Values.redis.auth.existingSecret }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
    items:
      - key: {{ .Values.redis.auth.passwordKey }}
        path: {{ .Values.redis.auth.passwordKey }}
{{- end }}
{{- with .Values.redis.tls }}
{{- if .existingSecret }}
- name: redis-tls
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
    items:
      {{- range (compact (list .caKey .certKey .keyKey)) }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The downward API: the pod's name, IP and namespace. */}}
{{- define "ringway.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}

{{/* OpenTelemetry variables: call with (dict "ctx" $ "service" "ringway-gateway"). */}}
{{- define "ringway.otelEnv" -}}
{{- $attrs := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" }}
{{- range $k, $v := .ctx.Values.telemetry.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- with .ctx.Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: RUST_LOG
  value: {{ .ctx.Values.logLevel | quote }}
{{- end }}

{{/* Whether the chart creates the auth Secret, and what goes in it. */}}
{{- define "ringway.auth.createsApiTokens" -}}
{{- if and (not .Values.auth.apiTokens.existingSecret) .Values.auth.apiTokens.tokens }}true{{ end }}
{{- end }}

{{- define "ringway.auth.createsJwt" -}}
{{- if and (ne .Values.auth.jwt.algorithm "none") (not .Values.auth.jwt.existingSecret) }}true{{ end }}
{{- end }}

{{- define "ringway.auth.apiTokensSecret" -}}
{{- default (include "ringway.auth.name" .) .Values.auth.apiTokens.existingSecret }}
{{- end }}

{{- define "ringway.auth.apiTokensKey" -}}
{{- if .Values.auth.apiTokens.existingSecret }}{{ .Values.auth.apiTokens.existingSecretKey }}{{ else }}api-tokens{{ end }}
{{- end }}

{{- define "ringway.auth.jwtSecret" -}}
{{- default (include "ringway.auth.name" .) .Values.auth.jwt.existingSecret }}
{{- end }}

{{/* The file name of the JWT key in its Secret (and in the mounted directory). */}}
{{- define "ringway.auth.jwtDefaultKey" -}}
{{- if eq .Values.auth.jwt.algorithm "hs256" }}hs256-secret{{ else }}rs256-public-key.pem{{ end }}
{{- end }}

{{- define "ringway.auth.jwtKey" -}}
{{- if .Values.auth.jwt.existingSecret }}
{{- default (include "ringway.auth.jwtDefaultKey" .) .Values.auth.jwt.existingSecretKey }}
{{- else }}
{{- include "ringway.auth.jwtDefaultKey" . }}
{{- end }}
{{- end }}

{{/* Where secret files are mounted in the gateway container. */}}
{{- define "ringway.auth.apiTokensDir" -}}/etc/ringway/api-tokens{{- end }}
{{- define "ringway.auth.jwtDir" -}}/etc/ringway/jwt{{- end }}

{{/*
The cluster credential. "true" or empty, as the auth helpers above.
  usesSecret:    --cluster-secret-file (not insecure, cluster.secret.enabled)
  createsSecret: the chart creates the Secret (no existingSecret)
  usesTls:       --cluster-tls-* (not insecure, cluster.tls.enabled)
  certManager:   the chart creates a cert-manager Certificate
*/}}
{{- define "ringway.cluster.usesSecret" -}}
{{- if and (not .Values.cluster.insecure) .Values.cluster.secret.enabled }}true{{ end }}
{{- end }}

{{- define "ringway.cluster.createsSecret" -}}
{{- if and (include "ringway.cluster.usesSecret" .) (not .Values.cluster.secret.existingSecret) }}true{{ end }}
{{- end }}

{{- define "ringway.cluster.usesTls" -}}
{{- if and (not .Values.cluster.insecure) .Values.cluster.tls.enabled }}true{{ end }}
{{- end }}

{{- define "ringway.cluster.certManager" -}}
{{- if and (include "ringway.cluster.usesTls" .) .Values.cluster.tls.certManager.issuerRef.name }}true{{ end }}
{{- end }}

{{- define "ringway.cluster.secretRef" -}}
{{- default (include "ringway.cluster.secretName" .) .Values.cluster.secret.existingSecret }}
{{- end }}

{{- define "ringway.cluster.secretKey" -}}
{{- if .Values.cluster.secret.existingSecret }}{{ .Values.cluster.secret.existingSecretKey }}{{ else }}cluster-secret{{ end }}
{{- end }}

{{- define "ringway.cluster.tlsSecret" -}}
{{- default (include "ringway.cluster.tlsName" .) .Values.cluster.tls.existingSecret }}
{{- end }}

{{/* The name checked in the members' certificates (and put in the Certificate). */}}
{{- define "ringway.cluster.serverName" -}}
{{- default (printf "%s-cluster.%s.svc" (include "ringway.fullname" .) .Release.Namespace) .Values.cluster.tls.serverName }}
{{- end }}

{{/*
The generated shared secret, base64-encoded: the value already in the
release's Secret when there is one (so `helm upgrade` keeps it), else 48
random characters. Computed once per render and kept in the render's root
context, so the Secret and the checksum annotations agree. `lookup` finds
nothing under `helm template` (or --dry-run): a new value every time.
*/}}
{{- define "ringway.cluster.generatedSecret" -}}
{{- if not (hasKey . "ringwayClusterSecret") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "ringway.cluster.secretName" .) }}
{{- $value := dig "data" "cluster-secret" "" ($existing | default dict) }}
{{- if not $value }}
{{- $value = randAlphaNum 48 | b64enc }}
{{- end }}
{{- $_ := set . "ringwayClusterSecret" $value }}
{{- end }}
{{- get . "ringwayClusterSecret" }}
{{- end }}

{{/* Where the cluster credential is mounted (gateways and coordinator). */}}
{{- define "ringway.cluster.secretDir" -}}/etc/ringway/cluster-secret{{- end }}
{{- define "ringway.cluster.tlsDir" -}}/etc/ringway/cluster-tls{{- end }}

{{/* The flags of the cluster credential, common to both binaries. */}}
{{- define "ringway.cluster.args" -}}
{{- $args := list }}
{{- if .Values.cluster.insecure }}
{{- $args = append $args "--insecure-cluster" }}
{{- end }}
{{- if include "ringway.cluster.usesSecret" . }}
{{- $args = append $args (printf "--cluster-secret-file=%s/%s" (include "ringway.cluster.secretDir" .) (include "ringway.cluster.secretKey" .)) }}
{{- end }}
{{- if include "ringway.cluster.usesTls" . }}
{{- $dir := include "ringway.cluster.tlsDir" . }}
{{- $args = concat $args (list
  (printf "--cluster-tls-ca=%s/ca.crt" $dir)
  (printf "--cluster-tls-cert=%s/tls.crt" $dir)
  (printf "--cluster-tls-key=%s/tls.key" $dir)
) }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/* volumeMounts of the cluster credential (may be empty). */}}
{{- define "ringway.cluster.volumeMounts" -}}
{{- if include "ringway.cluster.usesSecret" . }}
- name: cluster-secret
  mountPath: {{ include "ringway.cluster.secretDir" . }}
  readOnly: true
{{- end }}
{{- if include "ringway.cluster.usesTls" . }}
- name: cluster-tls
  mountPath: {{ include "ringway.cluster.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* volumes of the cluster credential (may be empty). */}}
{{- define "ringway.cluster.volumes" -}}
{{- if include "ringway.cluster.usesSecret" . }}
- name: cluster-secret
  secret:
    secretName: {{ include "ringway.cluster.secretRef" . }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
    items:
      - key: {{ include "ringway.cluster.secretKey" . }}
        path: {{ include "ringway.cluster.secretKey" . }}
{{- end }}
{{- if include "ringway.cluster.usesTls" . }}
- name: cluster-tls
  secret:
    secretName: {{ include "ringway.cluster.tlsSecret" . }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
    items:
      - key: ca.crt
        path: ca.crt
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}

{{/*
What the pods' checksum/cluster annotation hashes: the generated secret's
value, or the names of the Secrets the credential comes from (a change of
the contents of your own Secrets is not seen: restart the pods then).
*/}}
{{- define "ringway.cluster.checksum" -}}
{{- $parts := list (printf "insecure=%t" .Values.cluster.insecure) }}
{{- if include "ringway.cluster.createsSecret" . }}
{{- $parts = append $parts (printf "secret=%s" (include "ringway.cluster.generatedSecret" .)) }}
{{- else if include "ringway.cluster.usesSecret" . }}
{{- $parts = append $parts (printf "secret=%s/%s" (include "ringway.cluster.secretRef" .) (include "ringway.cluster.secretKey" .)) }}
{{- end }}
{{- if include "ringway.cluster.usesTls" . }}
{{- $parts = append $parts (printf "tls=%s/%s" (include "ringway.cluster.tlsSecret" .) (include "ringway.cluster.serverName" .)) }}
{{- end }}
{{- join "\n" $parts | sha256sum }}
{{- end }}

{{/* The port of a http://HOST:PORT URL (default 80). */}}
{{- define "ringway.urlPort" -}}
{{- $hostport := regexReplaceAll "^[a-z]+://([^/]*).*$" . "${1}" }}
{{- if regexMatch ":[0-9]+$" $hostport }}
{{- regexFind "[0-9]+$" $hostport }}
{{- else if hasPrefix "https://" . }}443
{{- else }}80
{{- end }}
{{- end }}

{{/*
Checks of combinations the schema cannot express; every template includes
this once (it renders nothing).
*/}}
{{- define "ringway.validate" -}}
{{- $d := .Values.gateway.drain }}
{{- $needed := add (int $d.preStopSleepSeconds) (div (add (int $d.drainDelayMs) (int $d.shutdownTimeoutMs) 999) 1000) }}
{{- if le (int .Values.gateway.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed gateway.drain.preStopSleepSeconds + (drainDelayMs + shutdownTimeoutMs) / 1000 = %d, or Kubernetes kills gateways mid-drain" (int .Values.gateway.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- if and .Values.upstream.url (ne .Values.auth.jwt.algorithm "none") }}
{{- fail "upstream.url and auth.jwt cannot be combined: with an upstream, its OnConnect hook decides who connects" }}
{{- end }}
{{- if and (ne .Values.auth.jwt.algorithm "none") (not .Values.auth.jwt.existingSecret) }}
{{- if and (eq .Values.auth.jwt.algorithm "hs256") (not .Values.auth.jwt.hs256Secret) }}
{{- fail "auth.jwt.algorithm=hs256 needs auth.jwt.existingSecret or auth.jwt.hs256Secret" }}
{{- end }}
{{- if and (eq .Values.auth.jwt.algorithm "rs256") (not .Values.auth.jwt.rs256PublicKey) }}
{{- fail "auth.jwt.algorithm=rs256 needs auth.jwt.existingSecret or auth.jwt.rs256PublicKey" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.auth.jwt.algorithm "none") (or .Values.auth.jwt.audiences .Values.auth.jwt.issuers) }}
{{- fail "auth.jwt.audiences and auth.jwt.issuers need auth.jwt.algorithm hs256 or rs256" }}
{{- end }}
{{- if lt (int .Values.gateway.config.maxQueuedBytes) (int .Values.gateway.config.maxPayloadBytes) }}
{{- fail "gateway.config.maxQueuedBytes must be at least gateway.config.maxPayloadBytes" }}
{{- end }}
{{- if ge (mul (int .Values.coordinator.heartbeatIntervalMs) 2) (int .Values.coordinator.leaseTtlMs) }}
{{- fail "coordinator.heartbeatIntervalMs must be below coordinator.leaseTtlMs / 2" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.sessionsPerPod.enabled) }}
{{- fail "autoscaling needs a metric: targetCPUUtilizationPercentage > 0 or sessionsPerPod.enabled" }}
{{- end }}
{{- if and .Values.ingress.enabled (le (int .Values.ingress.timeoutSeconds) (div (int .Values.gateway.config.pingIntervalMs) 1000)) }}
{{- fail "ingress.timeoutSeconds must exceed gateway.config.pingIntervalMs / 1000, or the proxy cuts idle WebSockets and long-polls" }}
{{- end }}
{{- $cl := .Values.cluster }}
{{- if $cl.insecure }}
{{- if $cl.tls.enabled }}
{{- fail "cluster.insecure cannot be combined with cluster.tls.enabled: insecure means no credential at all" }}
{{- end }}
{{- if $cl.secret.existingSecret }}
{{- fail "cluster.insecure cannot be combined with cluster.secret.existingSecret: insecure means no credential at all" }}
{{- end }}
{{- else if and (not $cl.secret.enabled) (not $cl.tls.enabled) }}
{{- fail "the cluster needs a credential: cluster.secret.enabled or cluster.tls.enabled (cluster.insecure=true runs without one, for experiments only)" }}
{{- end }}
{{- if $cl.tls.enabled }}
{{- if and $cl.tls.existingSecret $cl.tls.certManager.issuerRef.name }}
{{- fail "cluster.tls: set either existingSecret or certManager.issuerRef.name, not both" }}
{{- end }}
{{- if not (or $cl.tls.existingSecret $cl.tls.certManager.issuerRef.name) }}
{{- fail "cluster.tls.enabled needs cluster.tls.certManager.issuerRef.name (a cert-manager Certificate) or cluster.tls.existingSecret (tls.crt, tls.key, ca.crt)" }}
{{- end }}
{{- end }}
{{- $p := .Values.gateway.ports }}
{{- $ports := list (int $p.http) (int $p.node) (int $p.api) }}
{{- if $p.metrics }}
{{- $ports = append $ports (int $p.metrics) }}
{{- end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail "gateway.ports: http, node, api and metrics must be different ports" }}
{{- end }}
{{- $most := ternary (int .Values.autoscaling.maxReplicas) (int .Values.gateway.replicas) .Values.autoscaling.enabled }}
{{- if lt (int .Values.coordinator.maxMembers) $most }}
{{- fail (printf "coordinator.maxMembers (%d) is below the most gateways this release runs (%d): joins past it are refused" (int .Values.coordinator.maxMembers) $most) }}
{{- end }}
{{- range $key := list "httpRoute" "grpcRoute" }}
{{- $route := index $.Values $key }}
{{- if and $route.enabled (not $route.parentRefs) }}
{{- fail (printf "%s.enabled needs %s.parentRefs: the Gateway (or listener) to attach the route to" $key $key) }}
{{- end }}
{{- end }}
{{- $pr := .Values.prometheusRule }}
{{- if $pr.enabled }}
{{- $on := list }}
{{- range $name, $alert := $pr.alerts }}
{{- if $alert.enabled }}{{ $on = append $on $name }}{{ end }}
{{- end }}
{{- if and (not $on) (not $pr.extraRules) }}
{{- fail "prometheusRule.enabled with every alert off and no extraRules: nothing to create" }}
{{- end }}
{{- end }}
{{- include "ringway.validateExtras" (dict "where" "gateway" "values" .Values.gateway "volumes" (list "tmp" "cluster-secret" "cluster-tls" "api-tokens" "jwt")) }}
{{- include "ringway.validateExtras" (dict "where" "coordinator" "values" .Values.coordinator "volumes" (list "cluster-secret" "cluster-tls")) }}
{{- end }}

{{/*
Checks of the escape hatches of one component: call with (dict "where"
"gateway" "values" .Values.gateway "volumes" <the chart's volume names>).
Volume and container names must be unique in the pod, and every extra
mount must name a volume of the pod. Renders nothing.
*/}}
{{- define "ringway.validateExtras" -}}
{{- $v := .values }}
{{- $volumes := .volumes }}
{{- range $v.extraVolumes }}
{{- if has .name $volumes }}
{{- fail (printf "%s.extraVolumes: the volume name %q is taken (the chart's, or listed twice)" $.where .name) }}
{{- end }}
{{- $volumes = append $volumes .name }}
{{- end }}
{{- range $v.extraVolumeMounts }}
{{- if not (has .name $volumes) }}
{{- fail (printf "%s.extraVolumeMounts: no volume %q in the pod (add it to %s.extraVolumes)" $.where .name $.where) }}
{{- end }}
{{- end }}
{{- $containers := list $.where }}
{{- range concat $v.initContainers $v.extraContainers }}
{{- if has .name $containers }}
{{- fail (printf "%s: the container name %q is taken (the chart's %q, or listed twice in initContainers and extraContainers)" $.where .name $.where) }}
{{- end }}
{{- $containers = append $containers .name }}
{{- end }}
{{- end }}

{{/*
topologySpreadConstraints of a component: call with (dict "ctx" $
"component" "gateway" "constraints" <list>). A constraint without a
labelSelector gets the component's selector labels.
*/}}
{{- define "ringway.topologySpread" -}}
{{- $out := list }}
{{- $selector := include "ringway.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* "true" when the built-in echo application answers CONNECTs without a token. */}}
{{- define "ringway.echoApp" -}}
{{- if and (not .Values.upstream.url) (eq .Values.auth.jwt.algorithm "none") }}true{{ end }}
{{- end }}

{{/*
PromQL label matchers of the release's series (no braces): call with (dict
"ctx" $ "component" "gateway" or "coordinator").
*/}}
{{- define "ringway.prometheusRule.selector" -}}
{{- $ctx := .ctx }}
{{- if eq .component "gateway" }}
{{- default (printf "namespace=%q,job=%q" $ctx.Release.Namespace (include "ringway.metrics.name" $ctx)) $ctx.Values.prometheusRule.gatewaySelector }}
{{- else }}
{{- default (printf "namespace=%q,job=%q" $ctx.Release.Namespace (include "ringway.coordinator.name" $ctx)) $ctx.Values.prometheusRule.coordinatorSelector }}
{{- end }}
{{- end }}

{{/* The gateways the membership view should hold at least. */}}
{{- define "ringway.prometheusRule.expectedMembers" -}}
{{- $pr := .Values.prometheusRule }}
{{- if $pr.expectedMembers }}{{ $pr.expectedMembers }}
{{- else if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}
{{- else }}{{ .Values.gateway.replicas }}
{{- end }}
{{- end }}

{{/* The gateway's flags, one list item each. */}}
{{- define "ringway.gateway.args" -}}
{{- $gw := .Values.gateway }}
{{- $cfg := $gw.config }}
{{- $args := list
  (printf "--listen=0.0.0.0:%d" (int $gw.ports.http))
  (printf "--grpc-listen=0.0.0.0:%d" (int $gw.ports.node))
  (printf "--api-listen=0.0.0.0:%d" (int $gw.ports.api))
  (printf "--coordinator=%s" (include "ringway.coordinator.address" .))
  "--node-id=$(POD_NAME)"
  (printf "--advertise-grpc=$(POD_IP):%d" (int $gw.ports.node))
  (printf "--advertise-http=$(POD_IP):%d" (int $gw.ports.http))
  (printf "--key-prefix=%s" .Values.cluster.keyPrefix)
  (printf "--log-format=%s" .Values.logFormat)
  (printf "--path=%s" $cfg.path)
  (printf "--namespace=%s" (join "," $cfg.namespaces))
}}
{{- with $gw.ports.metrics }}
{{- $args = append $args (printf "--metrics-listen=0.0.0.0:%d" (int .)) }}
{{- end }}
{{- $args = concat $args (include "ringway.cluster.args" . | fromYamlArray) }}
{{- if include "ringway.cluster.usesTls" . }}
{{- $args = append $args (printf "--cluster-tls-server-name=%s" (include "ringway.cluster.serverName" .)) }}
{{- end }}
{{- with $gw.limits.trustedProxies }}
{{- $args = append $args (printf "--trusted-proxy=%s" (join "," .)) }}
{{- end }}
{{- with $cfg.corsOrigins }}
{{- $args = append $args (printf "--cors-origin=%s" (join "," .)) }}
{{- end }}
{{- $args = concat $args (list
  (printf "--ping-interval=%d" (int $cfg.pingIntervalMs))
  (printf "--ping-timeout=%d" (int $cfg.pingTimeoutMs))
  (printf "--max-payload=%d" (int $cfg.maxPayloadBytes))
  (printf "--http-compression-threshold=%d" (int $cfg.httpCompressionThreshold))
  (printf "--parser=%s" $cfg.parser)
  (printf "--max-queued-bytes=%d" (int $cfg.maxQueuedBytes))
  (printf "--connect-timeout=%d" (int $cfg.connectTimeoutMs))
  (printf "--upgrade-timeout=%d" (int $cfg.upgradeTimeoutMs))
  (printf "--registry-ttl=%d" (int $cfg.registryTtlMs))
  (printf "--listen-backlog=%d" (int $cfg.listenBacklog))
  (printf "--recovery-window=%d" (int $cfg.recoveryWindowMs))
  (printf "--recovery-max-log=%d" (int $cfg.recoveryMaxLog))
  (printf "--max-sessions=%d" (int $gw.limits.maxSessions))
  (printf "--max-sessions-per-ip=%d" (int $gw.limits.maxSessionsPerIp))
  (printf "--handshake-rate-per-ip=%v" $gw.limits.handshakeRatePerIp)
  (printf "--handshake-burst-per-ip=%v" $gw.limits.handshakeBurstPerIp)
  (printf "--header-read-timeout=%d" (int $gw.limits.headerReadTimeoutMs))
  (printf "--body-read-timeout=%d" (int $gw.limits.bodyReadTimeoutMs))
  (printf "--max-body-buffer=%d" (int64 $gw.limits.maxBodyBufferBytes))
  (printf "--max-rooms-per-socket=%d" (int $gw.limits.maxRoomsPerSocket))
  (printf "--max-room-name=%d" (int $gw.limits.maxRoomNameBytes))
  (printf "--max-event-name=%d" (int $gw.limits.maxEventNameBytes))
  (printf "--max-failed-connects=%d" (int $gw.limits.maxFailedConnects))
  (printf "--recovery-max-event-bytes=%d" (int $gw.limits.recoveryMaxEventBytes))
  (printf "--recovery-max-log-bytes=%d" (int64 $gw.limits.recoveryMaxLogBytes))
  (printf "--drain-delay=%d" (int $gw.drain.drainDelayMs))
  (printf "--shutdown-timeout=%d" (int $gw.drain.shutdownTimeoutMs))
) }}
{{- if not $cfg.allowEio3 }}
{{- $args = append $args "--allow-eio3=false" }}
{{- end }}
{{- with .Values.upstream.url }}
{{- $args = concat $args (list
  (printf "--upstream=%s" .)
  (printf "--upstream-timeout=%d" (int $.Values.upstream.timeoutMs))
  (printf "--upstream-max-in-flight=%d" (int $.Values.upstream.maxInFlight))
) }}
{{- end }}
{{- if or .Values.auth.apiTokens.existingSecret .Values.auth.apiTokens.tokens }}
{{- $args = append $args (printf "--api-token-file=%s/%s" (include "ringway.auth.apiTokensDir" .) (include "ringway.auth.apiTokensKey" .)) }}
{{- end }}
{{- $jwt := .Values.auth.jwt }}
{{- if ne $jwt.algorithm "none" }}
{{- $flag := ternary "--jwt-hs256-secret-file" "--jwt-rs256-public-key" (eq $jwt.algorithm "hs256") }}
{{- $args = append $args (printf "%s=%s/%s" $flag (include "ringway.auth.jwtDir" .) (include "ringway.auth.jwtKey" .)) }}
{{- with $jwt.audiences }}
{{- $args = append $args (printf "--jwt-audience=%s" (join "," .)) }}
{{- end }}
{{- with $jwt.issuers }}
{{- $args = append $args (printf "--jwt-issuer=%s" (join "," .)) }}
{{- end }}
{{- $args = append $args (printf "--jwt-leeway=%d" (int $jwt.leewaySeconds)) }}
{{- end }}
{{- $args = concat $args $gw.extraArgs }}
{{- toYaml $args }}
{{- end }}

{{/* The coordinator's flags. */}}
{{- define "ringway.coordinator.args" -}}
{{- $c := .Values.coordinator }}
{{- $args := list
  (printf "--listen=0.0.0.0:%d" (int $c.port))
  (printf "--lease-ttl=%d" (int $c.leaseTtlMs))
  (printf "--heartbeat-interval=%d" (int $c.heartbeatIntervalMs))
  (printf "--max-members=%d" (int $c.maxMembers))
  (printf "--key-prefix=%s" .Values.cluster.keyPrefix)
  (printf "--log-format=%s" .Values.logFormat)
}}
{{- $args = concat $args (include "ringway.cluster.args" . | fromYamlArray) }}
{{- if $c.dashboard.enabled }}
{{- $args = append $args (printf "--http-listen=0.0.0.0:%d" (int $c.dashboard.port)) }}
{{- end }}
{{- $args = concat $args $c.extraArgs }}
{{- toYaml $args }}
{{- end }}

{{/* NetworkPolicy egress rule to Redis (embedded pods, or the external one). */}}
{{- define "ringway.networkPolicy.redisEgress" -}}
{{- if .Values.redis.embedded.enabled }}
- ports:
    - port: 6379
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "ringway.componentSelectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
{{- else }}
- ports:
    - port: {{ .Values.networkPolicy.redisPort }}
      protocol: TCP
  {{- with .Values.networkPolicy.redis }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rule to the cluster DNS. */}}
{{- define "ringway.networkPolicy.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
