{{/* Name of this release's objects (the Secret's name is a value: the post-renderer refers to it). */}}
{{- define "openshell-ha.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openshell-ha.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: openshell-ha
{{- end -}}

{{/* The post-renderer flags that match .Values.peerTls (the post-renderer makes the pods). */}}
{{- define "openshell-ha.peerTlsArgs" -}}
{{- $p := .Values.peerTls -}}
{{- if $p.enabled -}}
{{- if eq $p.source "certManager" -}}
--post-renderer-args=--peer-tls=cert-manager --post-renderer-args=--peer-tls-issuer={{ $p.certManager.issuerKind }}/{{ $p.certManager.issuerName }}
{{- else -}}
--post-renderer-args=--peer-tls=secret --post-renderer-args=--peer-tls-secret={{ $p.secretName }}
{{- end }} --post-renderer-args=--peer-spiffe-id={{ $p.spiffeIdTemplate }}
{{- end -}}
{{- end -}}
