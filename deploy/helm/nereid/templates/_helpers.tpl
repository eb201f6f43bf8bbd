{{- define "nereid.labels" -}}
app.kubernetes.io/name: nereid
app.kubernetes.io/part-of: nereid
{{- end -}}
{{- define "nereid.selector" -}}
app.kubernetes.io/name: nereid
app.kubernetes.io/component: server
{{- end -}}
