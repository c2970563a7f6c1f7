{{- define "duro.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "duro.labels" -}}
app.kubernetes.io/name: {{ include "duro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "duro.selector" -}}
app.kubernetes.io/name: {{ include "duro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "duro.secretName" -}}
{{- default (printf "%s-duro" (include "duro.name" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "duro.tlsSecretName" -}}
{{- if .Values.tls.create -}}
{{- printf "%s-duro-tls" (include "duro.name" .) -}}
{{- else -}}
{{- required "tls.secretName is required when tls.enabled is true (or set tls.create)" .Values.tls.secretName -}}
{{- end -}}
{{- end -}}

{{- define "duro.claimName" -}}
{{- default (printf "%s-duro-history" (include "duro.name" .)) .Values.storage.sqlite.persistence.existingClaim -}}
{{- end -}}

{{- define "duro.postgres" -}}
{{- if eq .Values.storage.backend "postgres" -}}true{{- else if ne .Values.storage.backend "sqlite" -}}
{{- fail (printf "storage.backend must be sqlite or postgres, not %q" .Values.storage.backend) -}}
{{- end -}}
{{- end -}}

{{- define "duro.dbSecretName" -}}
{{- default (printf "%s-duro-db" (include "duro.name" .)) .Values.storage.postgres.existingSecret -}}
{{- end -}}

{{/* The task hub (a PostgreSQL schema), checked as Duro checks it. */}}
{{- define "duro.taskHub" -}}
{{- $hub := default (include "duro.name" . | lower | replace "-" "_") .Values.storage.postgres.taskHub -}}
{{- if not (regexMatch "^[a-z][a-z0-9_]{0,47}$" $hub) -}}
{{- fail (printf "storage.postgres.taskHub %q: use 1-48 lower-case letters, digits or '_', starting with a letter" $hub) -}}
{{- end -}}
{{- $hub -}}
{{- end -}}

{{- define "duro.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "duro.name" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A secret value: the one given, else the one already in the cluster, else a new random one. */}}
{{- define "duro.secretValue" -}}
{{- $ctx := index . 0 -}}{{- $key := index . 1 -}}{{- $given := index . 2 -}}
{{- if $given -}}
{{- $given -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (include "duro.secretName" $ctx) -}}
{{- if and $existing (index ($existing.data | default dict) $key) -}}
{{- index $existing.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}
