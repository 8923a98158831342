#!/bin/sh
# shardline container entrypoint: SHARDLINE_* environment variables -> `shardline serve` flags.
#
#   (no arguments), `serve [FLAGS...]` or `--FLAG ...`  run a node; FLAGS are appended to the
#                                                       ones made from the environment and win
#   anything else (`shardline status ...`, `python ...`) is run as given
#
# Cluster mode when SHARDLINE_ETCD is set, else a standalone node serving SHARDLINE_WORKFLOWS.
#
#   SHARDLINE_ETCD            --etcd            etcd HOST:PORT (unset: standalone node)
#   SHARDLINE_CLUSTER         --cluster         cluster name                  [default]
#   SHARDLINE_NODE_ID         --node-id         node id, unique in the cluster [the hostname]
#   SHARDLINE_ADVERTISE_HOST  --advertise-host  address peers and clients dial: a pod IP or a
#                                               host name [this container's IP]; the node
#                                               binds 0.0.0.0 (standalone: --host, [0.0.0.0])
#   SHARDLINE_PORT            --port            gRPC port                     [7400]
#   SHARDLINE_GOSSIP_PORT     --gossip-port     UDP gossip port               [7946]
#   SHARDLINE_METRICS_PORT    --metrics-port    Prometheus /metrics, probes   [9400]
#   SHARDLINE_ZONE            --zone            zone / failure domain         [none]
#   SHARDLINE_CAPACITY        --capacity        ring weight                   [1.0]
#   SHARDLINE_CPU_THREADS     --cpu-threads     torch intra-op threads        [torch's choice]
#   SHARDLINE_WORKFLOWS       --workflows       standalone: workflow packages [/srv/shardline/workflows]
#   SHARDLINE_LOG_LEVEL       --log-level       Python log level              [INFO]
#   SHARDLINE_TLS_CA          --tls-ca          TLS: the cluster CA           [no TLS]
#   SHARDLINE_TLS_CERT        --tls-cert        TLS: this node's certificate
#   SHARDLINE_TLS_KEY         --tls-key         TLS: this node's private key
#   SHARDLINE_ADMIN_TOKEN_FILE --admin-token-file cluster mode without SHARDLINE_ADMIN_TOKEN:
#                                               a token generated here for this container
#                                               only (the preStop drain reads it)
#                                               [/tmp/shardline/admin-token]
#   SHARDLINE_DRAIN_GRACE_S   (read by the node) seconds a leaving node keeps answering
#                                               while NOT_SERVING, before GOAWAY [2]
# (the shardline CLI in the container reads the same three: admin calls use mutual TLS)
set -eu

case "${1:-serve}" in
  serve) if [ "$#" -gt 0 ]; then shift; fi ;;
  -*) ;;
  *) exec "$@" ;;
esac

own_address() {
  python -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'
}

# Prepend (in reverse) so that flags given on the command line come last and win.
if [ -n "${SHARDLINE_CPU_THREADS:-}" ]; then
  set -- --cpu-threads "$SHARDLINE_CPU_THREADS" "$@"
fi
if [ -n "${SHARDLINE_TLS_KEY:-}" ]; then
  set -- --tls-key "$SHARDLINE_TLS_KEY" "$@"
fi
if [ -n "${SHARDLINE_TLS_CERT:-}" ]; then
  set -- --tls-cert "$SHARDLINE_TLS_CERT" "$@"
fi
if [ -n "${SHARDLINE_TLS_CA:-}" ]; then
  set -- --tls-ca "$SHARDLINE_TLS_CA" "$@"
fi
set -- \
  --node-id "${SHARDLINE_NODE_ID:-$(hostname)}" \
  --port "${SHARDLINE_PORT:-7400}" \
  --metrics-port "${SHARDLINE_METRICS_PORT:-9400}" \
  "$@"
if [ -n "${SHARDLINE_ETCD:-}" ]; then
  if [ -z "${SHARDLINE_ADMIN_TOKEN:-}" ]; then
    # No admin Secret: a random token known only inside this container, so that the
    # preStop hook (deploy/prestop.py) can drain the node; admin calls from elsewhere
    # need the cluster's Secret (SHARDLINE_ADMIN_TOKEN).
    SHARDLINE_ADMIN_TOKEN_FILE="${SHARDLINE_ADMIN_TOKEN_FILE:-/tmp/shardline/admin-token}"
    (
      umask 077
      mkdir -p "$(dirname "$SHARDLINE_ADMIN_TOKEN_FILE")"
      python -c 'import secrets; print(secrets.token_hex(32))' >"$SHARDLINE_ADMIN_TOKEN_FILE"
    )
    set -- --admin-token-file "$SHARDLINE_ADMIN_TOKEN_FILE" "$@"
  fi
  advertise="${SHARDLINE_ADVERTISE_HOST:-}"
  if [ -z "$advertise" ]; then
    advertise="$(own_address)"  # fails the start (set -e) when it cannot be found
  fi
  set -- \
    --etcd "$SHARDLINE_ETCD" \
    --cluster "${SHARDLINE_CLUSTER:-default}" \
    --host 0.0.0.0 \
    --advertise-host "$advertise" \
    --gossip-port "${SHARDLINE_GOSSIP_PORT:-7946}" \
    --zone "${SHARDLINE_ZONE:-}" \
    --capacity "${SHARDLINE_CAPACITY:-1.0}" \
    "$@"
else
  set -- \
    --standalone \
    --workflows "${SHARDLINE_WORKFLOWS:-/srv/shardline/workflows}" \
    --host "${SHARDLINE_ADVERTISE_HOST:-0.0.0.0}" \
    "$@"
fi
exec shardline --log-level "${SHARDLINE_LOG_LEVEL:-INFO}" serve "$@"
