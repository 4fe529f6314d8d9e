# Sourced by the bench scripts: the host PID of the operator replica that
# leads (holds the Lease bosun-system/bosun-operator), found among this
# host's `bosun operator` processes by the POD_NAME in its environment.
# Needs $kubectl and KUBECONFIG; prints nothing (status 1) when none leads.
leading_operator_pid() {
  local holder pid
  holder=$($kubectl -n bosun-system get lease bosun-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null) || return 1
  [ -n "$holder" ] || return 1
  for pid in $(pgrep -f '^/usr/local/bin/bosun operator'); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "POD_NAME=$holder"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}
