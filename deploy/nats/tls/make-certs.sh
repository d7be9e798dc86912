#!/bin/sh
# Makes the TLS material for Alur's nats-server(s) and HTTP doors with openssl (1.1.1 or later).
#
#   sh deploy/nats/tls/make-certs.sh OUT_DIR [EXTRA_ADDRESS ...]
#
#   ALUR_TLS_NODES  the nodes, default "alur-1 alur-2 alur-3"; NAME=ADDR[,ADDR] adds that node's own
#                   addresses (its private IP, say) to its certificates: "alur-1=10.20.0.11 alur-2=10.20.0.12 ..."
#   ALUR_TLS_DAYS   validity of the issued certificates, default 825 (the CAs: 3650)
#   EXTRA_ADDRESS   a DNS name or IP address added to every certificate that clients check (the node
#                   certificates and http.pem): the compose service name `nats`, a load balancer, ...
#
# It writes into OUT_DIR (keys mode 0600; keep OUT_DIR out of git: deploy/secrets/ is ignored):
#   ca.pem, ca-key.pem                 the clients' CA. Clients (services, agencies' systems, the CLI) trust
#                                      ca.pem; keep ca-key.pem offline once the certificates are made.
#   NODE.pem, NODE-key.pem             each node's server certificate for clients (ALUR_NATS_TLS_CERT/KEY);
#                                      SANs: NODE, localhost, 127.0.0.1, the node's addresses, EXTRA_ADDRESS
#   route-ca.pem, route-ca-key.pem     the route CA (ALUR_NATS_ROUTE_TLS_CA): it signs the route
#                                      certificates and nothing else, so no client certificate opens a route
#   NODE-route.pem, NODE-route-key.pem each node's route certificate, server and client use
#                                      (ALUR_NATS_ROUTE_TLS_CERT/KEY); SANs: NODE and the node's addresses,
#                                      i.e. the hosts in ALUR_NATS_ROUTE_1/_2/_3
#   services.pem, services-key.pem     a client certificate for the Alur services (for `verify: true` on
#                                      the client port, once every client presents one)
#   http.pem, http-key.pem             the certificate of the TLS proxy in front of the HTTP doors
#                                      (deploy/caddy/Caddyfile); SANs: localhost, 127.0.0.1, EXTRA_ADDRESS
# An existing CA in OUT_DIR is reused: running the script again issues new certificates under the same CAs.
set -eu

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v openssl >/dev/null 2>&1 || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }

out=$1
shift
nodes=${ALUR_TLS_NODES:-"alur-1 alur-2 alur-3"}
days=${ALUR_TLS_DAYS:-825}
umask 077
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

san() {  # san ADDRESS -> DNS:ADDRESS or IP:ADDRESS
  case $1 in
    *:*) printf 'IP:%s' "$1" ;;                       # IPv6
    *[!0-9.]*) printf 'DNS:%s' "$1" ;;
    *) printf 'IP:%s' "$1" ;;
  esac
}

sans() {  # sans ADDRESS... -> DNS:a,IP:b,...
  list=""
  for address in "$@"; do
    [ -n "$address" ] || continue
    list="${list:+$list,}$(san "$address")"
  done
  printf '%s' "$list"
}

key() {  # key PATH: a P-256 key
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

ca() {  # ca NAME SUBJECT: OUT_DIR/NAME.pem and NAME-key.pem, kept if they exist
  if [ -s "$out/$1.pem" ] && [ -s "$out/$1-key.pem" ]; then
    echo "reusing $out/$1.pem"
    return
  fi
  key "$out/$1-key.pem"
  openssl req -x509 -new -key "$out/$1-key.pem" -sha256 -days 3650 -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/$1.pem"
  echo "wrote $out/$1.pem"
}

issue() {  # issue CA STEM COMMON_NAME EXTENDED_KEY_USAGE SANS
  key "$out/$2-key.pem"
  openssl req -new -key "$out/$2-key.pem" -subj "/O=Alur/CN=$3" -out "$work/$2.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$4"
    [ -z "$5" ] || echo "subjectAltName=$5"
  } > "$work/$2.ext"
  openssl x509 -req -in "$work/$2.csr" -CA "$out/$1.pem" -CAkey "$out/$1-key.pem" -CAcreateserial \
    -CAserial "$work/$1.srl" -sha256 -days "$days" -extfile "$work/$2.ext" -out "$out/$2.pem" 2>/dev/null
  echo "wrote $out/$2.pem${5:+ ($5)}"
}

ca ca "/O=Alur/CN=Alur clients CA"
ca route-ca "/O=Alur/CN=Alur route CA"
for spec in $nodes; do
  name=${spec%%=*}
  own=""
  [ "$name" = "$spec" ] || own=$(printf '%s' "${spec#*=}" | tr ',' ' ')
  # shellcheck disable=SC2086  # word splitting of the address lists is intended
  issue ca "$name" "$name" serverAuth "$(sans "$name" localhost 127.0.0.1 $own "$@")"
  # shellcheck disable=SC2086
  issue route-ca "$name-route" "$name" serverAuth,clientAuth "$(sans "$name" $own)"
done
issue ca services alur-services clientAuth ""
issue ca http alur-http serverAuth "$(sans localhost 127.0.0.1 "$@")"
chmod 644 "$out"/*.pem
chmod 600 "$out"/*-key.pem
echo "done: give clients $out/ca.pem; keep $out/ca-key.pem and $out/route-ca-key.pem offline"
