#!/usr/bin/env bash
# Certificates for a TLS-secured fedsparse deployment, and one key pair per SuperNode for node
# authentication. For prototyping; in production use your organisation's CA and key handling.
#
# Usage: docker/generate-certs.sh [OUT_DIR] [NODES] [--san DNS:host.example.org] [--san IP:10.0.0.5]
#        (defaults: docker/certificates, 3; --san may repeat)
# Writes: ca.crt/ca.key (the CA), server.pem/server.key (the SuperLink's, valid for the names
# superlink and localhost, the address 127.0.0.1 and every --san), and supernode-<i> /
# supernode-<i>.pub (ECDSA P-384, OpenSSH format) for i = 0..NODES-1.
# Private keys are mode 600. Flower's images run as uid 49999: as root this script hands the
# files the containers read to that user; otherwise it prints the chown to run.
set -euo pipefail
positional=()
sans="DNS:superlink, DNS:localhost, IP:127.0.0.1"
while (($#)); do
  case "$1" in
    --san)
      [[ $# -ge 2 && "$2" =~ ^(DNS|IP):[A-Za-z0-9.:*-]+$ ]] || {
        echo "error: --san needs DNS:name or IP:address, e.g. --san DNS:link.example.org" >&2; exit 2; }
      sans="$sans, $2"; shift 2 ;;
    --san=*)
      value=${1#--san=}
      [[ "$value" =~ ^(DNS|IP):[A-Za-z0-9.:*-]+$ ]] || {
        echo "error: --san needs DNS:name or IP:address, e.g. --san DNS:link.example.org" >&2; exit 2; }
      sans="$sans, $value"; shift ;;
    -*) echo "error: unknown option $1: use [OUT_DIR] [NODES] [--san DNS:name|IP:addr]" >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
out=${positional[0]:-docker/certificates}
nodes=${positional[1]:-3}
[[ "$nodes" =~ ^[0-9]+$ ]] || { echo "error: NODES must be a whole number, not '$nodes'" >&2; exit 2; }
mkdir -p "$out"
cd "$out"

openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=fedsparse CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=superlink" -keyout server.key -out server.csr 2>/dev/null
cat > server.ext <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl

for ((i = 0; i < nodes; i++)); do
  rm -f "supernode-$i" "supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsparse-supernode-$i" -f "supernode-$i"
done
chmod 600 ./*.key
[[ $nodes -gt 0 ]] && chmod 600 $(ls supernode-* | grep -v '\.pub$')
chmod 644 ca.crt server.pem
[[ $nodes -gt 0 ]] && chmod 644 ./*.pub
# what the containers read: the SuperLink's key and each node's key (never the CA key)
read_by_flower=(server.key server.pem ca.crt)
for ((i = 0; i < nodes; i++)); do read_by_flower+=("supernode-$i"); done
if [[ $(id -u) == 0 ]]; then
  chown 49999:49999 "${read_by_flower[@]}"
  echo "certificates and node keys in $(pwd) (container-read files owned by uid 49999)"
else
  echo "certificates and node keys in $(pwd)"
  echo "Flower's images run as uid 49999: run 'cd $(pwd) && sudo chown 49999:49999 ${read_by_flower[*]}'"
fi
