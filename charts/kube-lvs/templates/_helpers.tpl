{{/* The image of every kube-lvs container. */}}
{{- define "kube-lvs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of every object, and the selector labels of one component. */}}
{{- define "kube-lvs.labels" -}}
app.kubernetes.io/name: kube-lvs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "kube-lvs.selector" -}}
app.kubernetes.io/name: kube-lvs
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
