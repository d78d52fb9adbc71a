{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "mirrorsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart> unless the release name already contains the chart name.
*/}}
{{- define "mirrorsync.fullname" -}}
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
A CronJob's name is at most 52 characters: its Jobs add an 11-character suffix.
*/}}
{{- define "mirrorsync.cronjobName" -}}
{{- include "mirrorsync.fullname" . | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "mirrorsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirrorsync.labels" -}}
helm.sh/chart: {{ include "mirrorsync.chart" . }}
{{ include "mirrorsync.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mirrorsync
{{- end }}

{{- define "mirrorsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mirrorsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mirrorsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mirrorsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mirrorsync.image" -}}
{{- $repo := required "image.repository is required: the repository you pushed the image built from the Dockerfile to, e.g. registry.example.internal:5000/tools/mirrorsync (no public mirrorsync image is published)" .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Where everything mirrorsync reads is mounted (one projected volume: sync.yaml, passwords, the
docker config, CA bundles).
*/}}
{{- define "mirrorsync.configDir" -}}/etc/mirrorsync{{- end }}

{{/*
A registry host as a path component: "localhost:5000" -> "localhost_5000".
*/}}
{{- define "mirrorsync.hostPath" -}}
{{- regexReplaceAll "[^a-z0-9.-]" (lower .) "_" }}
{{- end }}

{{/*
A registry host as part of an environment variable name: "docker.io" -> "DOCKER_IO".
*/}}
{{- define "mirrorsync.hostEnv" -}}
{{- regexReplaceAll "[^A-Z0-9]" (upper .) "_" }}
{{- end }}

{{/*
Every credential and CA file the pod needs, as a list of
{kind: password|ca|docker, name, scope, key, source: secret|configMap, path (relative to
configDir), env (for mountAs env), username}, in a stable order: target (or each of targets, at
auth/targets/<name>/password and ca/targets/<name>.pem), then registries by host.
Rendered as YAML so templates can `fromYaml` it.
*/}}
{{- define "mirrorsync.credentials" -}}
{{- $items := list }}
{{- $scopes := list }}
{{- if .Values.config.targets }}
{{- range $i, $t := .Values.config.targets }}
{{- $scopes = append $scopes (dict "scope" (printf "targets[%d]" $i) "settings" $t "path" (printf "targets/%s" $t.name) "env" (printf "TARGET_%s" (include "mirrorsync.hostEnv" $t.name))) }}
{{- end }}
{{- else }}
{{- $scopes = append $scopes (dict "scope" "target" "settings" .Values.config.target "path" "target" "env" "TARGET") }}
{{- end }}
{{- range $host := keys .Values.config.registries | sortAlpha }}
{{- $scopes = append $scopes (dict "scope" (printf "registries.%s" $host) "settings" (get $.Values.config.registries $host) "path" (printf "registries/%s" (include "mirrorsync.hostPath" $host)) "env" (printf "REGISTRY_%s" (include "mirrorsync.hostEnv" $host))) }}
{{- end }}
{{- range $s := $scopes }}
{{- $auth := $s.settings.auth | default dict }}
{{- if $auth }}
{{- $secret := required (printf "config.%s.auth.existingSecret is required: the password comes from a Secret" $s.scope) $auth.existingSecret }}
{{- $key := default "password" $auth.existingSecretPasswordKey }}
{{- $mountAs := default "file" $auth.mountAs }}
{{- $items = append $items (dict "kind" "password" "scope" $s.scope "username" (required (printf "config.%s.auth.username is required" $s.scope) $auth.username) "source" "secret" "name" $secret "key" $key "mountAs" $mountAs "path" (printf "auth/%s/password" $s.path) "env" (printf "MIRRORSYNC_%s_PASSWORD" $s.env)) }}
{{- end }}
{{- $ca := $s.settings.caBundle | default dict }}
{{- if $ca }}
{{- if and $ca.configMap $ca.secret }}
{{- fail (printf "config.%s.caBundle: set configMap or secret, not both" $s.scope) }}
{{- end }}
{{- $src := ternary "configMap" "secret" (hasKey $ca "configMap") }}
{{- $ref := get $ca $src }}
{{- $items = append $items (dict "kind" "ca" "scope" $s.scope "source" $src "name" $ref.name "key" (default "ca.crt" $ref.key) "mountAs" "" "path" (printf "ca/%s.pem" $s.path)) }}
{{- end }}
{{- end }}
{{- if .Values.dockerConfig.existingSecret }}
{{- $items = append $items (dict "kind" "docker" "scope" "dockerConfig" "source" "secret" "name" .Values.dockerConfig.existingSecret "key" .Values.dockerConfig.key "mountAs" "" "path" "docker/config.json") }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end }}

{{/*
sync.yaml, from .Values.config with the chart-only keys (auth.existingSecret*, auth.mountAs,
caBundle) turned into the paths and variables the pod provides.
*/}}
{{- define "mirrorsync.syncYaml" -}}
{{- $dir := include "mirrorsync.configDir" . }}
{{- $creds := (include "mirrorsync.credentials" . | fromYaml).items }}
{{- $byScope := dict }}
{{- range $c := $creds }}
{{- $_ := set $byScope (printf "%s/%s" $c.scope $c.kind) $c }}
{{- end }}
{{- $out := dict "schedule" .Values.schedule "timezone" .Values.timezone "concurrency" .Values.config.concurrency }}
{{- with .Values.config.tag_series }}
{{- $_ := set $out "tag_series" . }}
{{- end }}
{{- $scopes := list }}
{{- $targets := list }}
{{- $target := dict }}
{{- if .Values.config.targets }}
{{- range $i, $t := .Values.config.targets }}
{{- $plain := omit $t "auth" "caBundle" }}
{{- $targets = append $targets $plain }}
{{- $scopes = append $scopes (list (printf "targets[%d]" $i) $plain) }}
{{- end }}
{{- else }}
{{- $target = omit (.Values.config.target | default dict) "auth" "caBundle" }}
{{- $scopes = append $scopes (list "target" $target) }}
{{- $_ := required "config.target.registry is required: the private registry to mirror into (host[:port]), or config.targets" $target.registry }}
{{- end }}
{{- $registries := dict }}
{{- range $host := keys .Values.config.registries | sortAlpha }}
{{- $r := omit (get $.Values.config.registries $host) "auth" "caBundle" }}
{{- $_ := set $registries $host $r }}
{{- $scopes = append $scopes (list (printf "registries.%s" $host) $r) }}
{{- end }}
{{- range $pair := $scopes }}
{{- $scope := index $pair 0 }}
{{- $settings := index $pair 1 }}
{{- with get $byScope (printf "%s/password" $scope) }}
{{- if eq .mountAs "env" }}
{{- $_ := set $settings "auth" (dict "username" .username "password_env" .env) }}
{{- else }}
{{- $_ := set $settings "auth" (dict "username" .username "password_file" (printf "%s/%s" $dir .path)) }}
{{- end }}
{{- end }}
{{- with get $byScope (printf "%s/ca" $scope) }}
{{- $_ := set $settings "ca_file" (printf "%s/%s" $dir .path) }}
{{- end }}
{{- end }}
{{- if $targets }}
{{- $_ := set $out "targets" $targets }}
{{- $spoolDir := .Values.config.spool_dir | default (ternary .Values.spool.mountPath "" (gt (len $targets) 1)) }}
{{- with $spoolDir }}
{{- $_ := set $out "spool_dir" . }}
{{- end }}
{{- with .Values.config.spool_size }}
{{- $_ := set $out "spool_size" . }}
{{- end }}
{{- else }}
{{- $_ := set $out "target" $target }}
{{- end }}
{{- with get $byScope "dockerConfig/docker" }}
{{- $_ := set $out "docker_config" (printf "%s/%s" $dir .path) }}
{{- end }}
{{- if $registries }}
{{- $_ := set $out "registries" $registries }}
{{- end }}
{{- if not .Values.config.images }}
{{- fail "config.images is required: at least one image to mirror (e.g. --set 'config.images={nginx:1.25}')" }}
{{- end }}
{{- $_ := set $out "images" .Values.config.images }}
{{- toYaml $out }}
{{- end }}

{{/*
A whole number of seconds as a mirrorsync duration: 3000 -> "50m", 3030 -> "3030s".
*/}}
{{- define "mirrorsync.goDuration" -}}
{{- $s := int . }}
{{- if and (gt $s 0) (eq (mod $s 3600) 0) }}{{ div $s 3600 }}h
{{- else if and (gt $s 0) (eq (mod $s 60) 0) }}{{ div $s 60 }}m
{{- else }}{{ $s }}s
{{- end }}
{{- end }}

{{/*
A duration of the form <n>s|m|h|d|w in seconds.
*/}}
{{- define "mirrorsync.seconds" -}}
{{- $n := regexFind "^[0-9]+" . | int }}
{{- $unit := regexFind "[smhdw]$" . }}
{{- $mult := get (dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800) $unit }}
{{- mul $n $mult }}
{{- end }}

{{/*
Seconds as the shortest <n>s|m|h|d|w: 86400 -> "1d", 7200 -> "2h".
*/}}
{{- define "mirrorsync.shortDuration" -}}
{{- $s := int . }}
{{- if eq (mod $s 604800) 0 }}{{ div $s 604800 }}w
{{- else if eq (mod $s 86400) 0 }}{{ div $s 86400 }}d
{{- else if eq (mod $s 3600) 0 }}{{ div $s 3600 }}h
{{- else if eq (mod $s 60) 0 }}{{ div $s 60 }}m
{{- else }}{{ $s }}s
{{- end }}
{{- end }}

{{/*
The longest gap between two passes of `schedule`, in seconds, where the form makes it plain;
"" otherwise. Nicknames; every N (a step on "*") in the first field (seconds in a 6-field
schedule, else minutes); a fixed minute with every hour or every N hours; a fixed minute and
hour every day, or on one day of the week. (`@monthly` and `@yearly` give their longest month and year.)
*/}}
{{- define "mirrorsync.scheduleSeconds" -}}
{{- $s := trim .Values.schedule }}
{{- $nicknames := dict "@hourly" 3600 "@daily" 86400 "@midnight" 86400 "@weekly" 604800 "@monthly" 2678400 "@yearly" 31622400 "@annually" 31622400 }}
{{- if hasKey $nicknames (lower $s) }}
{{- get $nicknames (lower $s) }}
{{- else }}
{{- $f := regexSplit "\\s+" $s -1 }}
{{- $unit := 60 }}
{{- if eq (len $f) 6 }}
{{- /* Seconds first: every N seconds, or a fixed second and the 5-field forms below. */}}
{{- if and (regexMatch "^\\*/[1-9][0-9]*$" (index $f 0)) (eq (join " " (rest $f)) "* * * * *") }}
{{- $unit = 0 }}{{ trimPrefix "*/" (index $f 0) }}
{{- else if regexMatch "^[0-9]+$" (index $f 0) }}
{{- $f = rest $f }}
{{- else }}
{{- $unit = 0 }}
{{- end }}
{{- end }}
{{- if and (gt $unit 0) (eq (len $f) 5) }}
{{- $m := index $f 0 }}{{ $h := index $f 1 }}{{ $dow := index $f 4 }}
{{- $days := join " " (slice $f 2 4) }}
{{- $fixed := "^[0-9]+$" }}
{{- $step := "^\\*/[1-9][0-9]*$" }}
{{- if and (eq $m "*") (eq (join " " (rest $f)) "* * * *") }}60
{{- else if and (regexMatch $step $m) (eq (join " " (rest $f)) "* * * *") }}{{ mul (trimPrefix "*/" $m | int) 60 }}
{{- else if and (regexMatch $fixed $m) (eq $h "*") (eq $days "* *") (eq $dow "*") }}3600
{{- else if and (regexMatch $fixed $m) (regexMatch $step $h) (eq $days "* *") (eq $dow "*") }}{{ mul (trimPrefix "*/" $h | int) 3600 }}
{{- else if and (regexMatch $fixed $m) (regexMatch $fixed $h) (eq $days "* *") (eq $dow "*") }}86400
{{- else if and (regexMatch $fixed $m) (regexMatch $fixed $h) (eq $days "* *") (regexMatch "^([0-7]|[A-Za-z]{3})$" $dow) }}604800
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
metrics.prometheusRule.runInterval: as set, else derived from `schedule`. Fails when both are
known and disagree, or when neither is.
*/}}
{{- define "mirrorsync.runInterval" -}}
{{- $set := .Values.metrics.prometheusRule.runInterval }}
{{- $derived := include "mirrorsync.scheduleSeconds" . }}
{{- if and $set $derived }}
{{- if ne (include "mirrorsync.seconds" $set | int) ($derived | int) }}
{{- fail (printf "metrics.prometheusRule.runInterval %s disagrees with schedule %q, which runs every %s: leave runInterval empty to derive it from schedule, or make them agree" $set .Values.schedule (include "mirrorsync.shortDuration" $derived)) }}
{{- end }}
{{- end }}
{{- if $set }}{{ $set }}
{{- else if $derived }}{{ include "mirrorsync.shortDuration" $derived }}
{{- else }}
{{- fail (printf "metrics.prometheusRule.runInterval cannot be derived from schedule %q (only nicknames, */N, and fixed-minute hourly, daily and weekly forms are): set it to the longest time between two passes" .Values.schedule) }}
{{- end }}
{{- end }}

{{/*
--max-duration for cronjob mode, in seconds.
*/}}
{{- define "mirrorsync.maxDurationSeconds" -}}
{{- $c := .Values.cronjob }}
{{- $max := sub (int $c.activeDeadlineSeconds) (int $c.maxDurationMarginSeconds) }}
{{- if lt $max 60 }}
{{- fail (printf "cronjob.activeDeadlineSeconds (%d) must exceed cronjob.maxDurationMarginSeconds (%d) by at least 60 seconds, so that --max-duration ends the run before Kubernetes kills it" (int $c.activeDeadlineSeconds) (int $c.maxDurationMarginSeconds)) }}
{{- end }}
{{- $max }}
{{- end }}

{{/*
The container's arguments (the image's entrypoint is the mirrorsync binary).
*/}}
{{- define "mirrorsync.args" -}}
{{- $args := list "sync" }}
{{- if eq .Values.mode "cronjob" }}
{{- $args = append $args "--once" }}
{{- end }}
{{- $args = concat $args (list "--config" (printf "%s/sync.yaml" (include "mirrorsync.configDir" .)) "--log-format" .Values.logFormat) }}
{{- if eq .Values.mode "cronjob" }}
{{- $args = concat $args (list "--max-duration" (include "mirrorsync.goDuration" (include "mirrorsync.maxDurationSeconds" .))) }}
{{- $args = concat $args (list "--deferred-exit-code" (toString (int .Values.cronjob.deferredExitCode))) }}
{{- if .Values.metrics.pushgateway.existingSecret }}
{{- /* The URL comes from the Secret through MIRRORSYNC_PUSHGATEWAY (see mirrorsync.podSpec). */}}
{{- $args = concat $args (list "--instance" (include "mirrorsync.pushInstance" .)) }}
{{- else if .Values.metrics.pushgateway.url }}
{{- $args = concat $args (list "--pushgateway" .Values.metrics.pushgateway.url "--instance" (include "mirrorsync.pushInstance" .)) }}
{{- end }}
{{- else }}
{{- $bind := .Values.metrics.bindAddress }}
{{- if contains ":" $bind }}{{ $bind = printf "[%s]" $bind }}{{ end }}
{{- $args = concat $args (list "--metrics-addr" (printf "%s:%d" $bind (int .Values.metrics.port))) }}
{{- if .Values.deployment.runNow }}
{{- $args = append $args "--run-now" }}
{{- end }}
{{- end }}
{{- $args = concat $args .Values.extraArgs }}
{{- toYaml $args }}
{{- end }}

{{/*
The Pushgateway `instance` label of this release's runs: stable across runs.
*/}}
{{- define "mirrorsync.pushInstance" -}}
{{- .Values.metrics.pushgateway.instance | default (include "mirrorsync.fullname" .) }}
{{- end }}

{{/*
PromQL label matchers of this release's series.
*/}}
{{- define "mirrorsync.metricSelector" -}}
{{- if .Values.metrics.prometheusRule.selector }}
{{- .Values.metrics.prometheusRule.selector }}
{{- else if eq .Values.mode "cronjob" }}
{{- printf "job=\"mirrorsync\", instance=%q" (include "mirrorsync.pushInstance" .) }}
{{- else }}
{{- printf "job=%q" (include "mirrorsync.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Pushgateway `shard` label of each group this release's runs push, as a list: ["0-of-3",
"1-of-3", "2-of-3"], or [""] unsharded (the group has no shard label).
*/}}
{{- define "mirrorsync.expectedShards" -}}
{{- $n := int .Values.shards }}
{{- $out := list }}
{{- if gt $n 1 }}
{{- range $i := until $n }}{{ $out = append $out (printf "%d-of-%d" $i $n) }}{{ end }}
{{- else }}
{{- $out = list "" }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The metric selector of the series alerts look at: this release's, and in cronjob mode only the
groups of the current `shards` (groups another shard count left in the Pushgateway are ignored).
*/}}
{{- define "mirrorsync.alertSelector" -}}
{{- $sel := include "mirrorsync.metricSelector" . }}
{{- if eq .Values.mode "cronjob" }}
{{- $shards := include "mirrorsync.expectedShards" . | fromJsonArray }}
{{- if gt (len $shards) 1 }}
{{- printf "%s, shard=~%q" $sel (join "|" $shards) }}
{{- else }}
{{- printf "%s, shard=\"\"" $sel }}
{{- end }}
{{- else }}
{{- $sel }}
{{- end }}
{{- end }}

{{/*
"true" when the pod gets the spool emptyDir: more than one of config.targets, and no
config.spool_dir of the user's own.
*/}}
{{- define "mirrorsync.spoolVolume" -}}
{{- if and (gt (len (.Values.config.targets | default list)) 1) (not .Values.config.spool_dir) }}true{{ end }}
{{- end }}

{{/*
The pod spec shared by the CronJob's Job and the Deployment.
*/}}
{{- define "mirrorsync.podSpec" -}}
{{- $dir := include "mirrorsync.configDir" . }}
{{- $creds := (include "mirrorsync.credentials" . | fromYaml).items -}}
serviceAccountName: {{ include "mirrorsync.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
containers:
  - name: mirrorsync
    image: {{ include "mirrorsync.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      {{- include "mirrorsync.args" . | nindent 6 }}
    {{- $env := list }}
    {{- range $c := $creds }}
    {{- if and (eq $c.kind "password") (eq $c.mountAs "env") }}
    {{- $env = append $env (dict "name" $c.env "valueFrom" (dict "secretKeyRef" (dict "name" $c.name "key" $c.key))) }}
    {{- end }}
    {{- end }}
    {{- if gt (int .Values.shards) 1 }}
    {{- $env = append $env (dict "name" "MIRRORSYNC_SHARDS" "value" (toString .Values.shards)) }}
    {{- end }}
    {{- $pg := .Values.metrics.pushgateway }}
    {{- if and (eq .Values.mode "cronjob") $pg.existingSecret }}
    {{- $env = append $env (dict "name" "MIRRORSYNC_PUSHGATEWAY" "valueFrom" (dict "secretKeyRef" (dict "name" $pg.existingSecret "key" $pg.existingSecretKey))) }}
    {{- end }}
    {{- $env = concat $env .Values.extraEnv }}
    {{- with $env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if eq .Values.mode "deployment" }}
    ports:
      - name: http-metrics
        containerPort: {{ .Values.metrics.port }}
        protocol: TCP
    livenessProbe:
      httpGet:
        path: /healthz
        port: http-metrics
      periodSeconds: 30
      timeoutSeconds: 5
      failureThreshold: 3
    # /healthz is liveness only: it fails when the scheduler is stuck, not when passes fail
    # (the alerts say that). Ready once /metrics answers.
    readinessProbe:
      httpGet:
        path: /metrics
        port: http-metrics
      periodSeconds: 10
      timeoutSeconds: 5
    {{- end }}
    {{- with .Values.securityContext }}
    securityContext:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: config
        mountPath: {{ $dir }}
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if include "mirrorsync.spoolVolume" . }}
      - name: spool
        mountPath: {{ .Values.spool.mountPath }}
      {{- end }}
      {{- with .Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    projected:
      {{- if (.Values.podSecurityContext | default dict).fsGroup }}
      # Readable by the owner and the group only: the files belong to root and to the pod's
      # fsGroup, which the container's user is in.
      defaultMode: 0440
      {{- else }}
      # No fsGroup: the container's user reads the files as "other".
      defaultMode: 0444
      {{- end }}
      sources:
        - configMap:
            name: {{ include "mirrorsync.fullname" . }}
            items:
              - key: sync.yaml
                path: sync.yaml
        {{- range $c := $creds }}
        {{- if not (and (eq $c.kind "password") (eq $c.mountAs "env")) }}
        - {{ $c.source }}:
            name: {{ $c.name }}
            items:
              - key: {{ $c.key | quote }}
                path: {{ $c.path }}
        {{- end }}
        {{- end }}
  - name: tmp
    {{- with .Values.tmp.sizeLimit }}
    emptyDir:
      sizeLimit: {{ . }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  {{- if include "mirrorsync.spoolVolume" . }}
  # The blob spool of a run over several targets (sync.yaml's spool_dir).
  - name: spool
    {{- with .Values.spool.sizeLimit }}
    emptyDir:
      sizeLimit: {{ . }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod template metadata: labels and the checksum of sync.yaml (a config change rolls the Deployment
and is visible on every Job).
*/}}
{{- define "mirrorsync.podMetadata" -}}
labels:
  {{- include "mirrorsync.labels" . | nindent 2 }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include "mirrorsync.syncYaml" . | sha256sum }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Seconds as a compound duration that Prometheus and people read: 25800 -> "7h10m", 0 -> "0s".
*/}}
{{- define "mirrorsync.humanDuration" -}}
{{- $s := int . }}
{{- $h := div $s 3600 }}{{ $m := div (mod $s 3600) 60 }}{{ $r := mod $s 60 }}
{{- if $h }}{{ $h }}h{{ end }}{{ if $m }}{{ $m }}m{{ end }}{{ if or $r (eq $s 0) }}{{ $r }}s{{ end }}
{{- end }}

{{/*
A Prometheus duration (e.g. 1h30m, 5m, 0) in whole seconds (milliseconds dropped).
*/}}
{{- define "mirrorsync.promSeconds" -}}
{{- $mult := dict "ms" 0 "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 "y" 31536000 }}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+(ms|[smhdwy])" . -1 }}
{{- $n := regexFind "^[0-9]+" $part | int }}
{{- $total = add $total (mul $n (get $mult (trimPrefix (toString $n) $part))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
An alert's labels and annotations, from a dict: alert, severity, reason (optional), summary,
description, ruleLabels (added labels), runbookUrl (base; the anchor is the alert's name in lower case).
*/}}
{{- define "mirrorsync.alertMeta" -}}
labels:
  severity: {{ .severity }}
  {{- with .reason }}
  # Rules that share an alert name differ in this label (and never match together).
  reason: {{ . }}
  {{- end }}
  {{- with .ruleLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  summary: {{ .summary | quote }}
  description: {{ .description | quote }}
  {{- with .runbookUrl }}
  runbook_url: {{ printf "%s#%s" . (lower $.alert) | quote }}
  {{- end }}
{{- end }}
