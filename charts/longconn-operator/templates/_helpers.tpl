{{/* The chart name, or nameOverride. */}}
{{- define "longconn-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of every object: fullnameOverride, or the release name plus the chart name. */}}
{{- define "longconn-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "longconn-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods; also passed to the operator as --operator-pod-labels. */}}
{{- define "longconn-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "longconn-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "longconn-operator.labels" -}}
{{ include "longconn-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: longconn
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The selector labels as k=v,k=v, sorted (the operator's --operator-pod-labels). */}}
{{- define "longconn-operator.podLabelsFlag" -}}
{{- $pairs := list -}}
{{- range $k, $v := (include "longconn-operator.selectorLabels" . | fromYaml) -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The ServiceAccount's name. */}}
{{- define "longconn-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "longconn-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository, then @digest or :tag (the appVersion when empty). */}}
{{- define "longconn-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The gateway image the operator injects into LongConnService pods. */}}
{{- define "longconn-operator.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) -}}
{{- end -}}

{{/* The RBAC rules the operator needs, from files/rbac.yaml (the output of `longconn-operator rbac`). */}}
{{- define "longconn-operator.rbac" -}}
{{- .Files.Get "files/rbac.yaml" -}}
{{- end -}}
