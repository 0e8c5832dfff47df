#!/usr/bin/env bash
# Certificates for a TLS-secured fedsparse deployment, and one key pair per SuperNode for node
# authentication. For prototyping; in production use your organisation's CA and key handling.
#
# Usage: docker/generate-certs.sh [OUT_DIR] [NODES]      (defaults: docker/certificates, 3)
# Writes: ca.crt/ca.key (the CA), server.pem/server.key (the SuperLink's, valid for the names
# superlink and localhost and the address 127.0.0.1), and supernode-<i> / supernode-<i>.pub
# (ECDSA P-384, OpenSSH format) for i = 0..NODES-1.
set -euo pipefail
out=${1:-docker/certificates}
nodes=${2:-3}
mkdir -p "$out"
cd "$out"

openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=fedsparse CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=superlink" -keyout server.key -out server.csr 2>/dev/null
cat > server.ext <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:superlink, DNS:localhost, IP:127.0.0.1
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl

for ((i = 0; i < nodes; i++)); do
  rm -f "supernode-$i" "supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsparse-supernode-$i" -f "supernode-$i"
done
chmod 600 ./*.key supernode-*
chmod 644 ./*.pub ca.crt server.pem
echo "certificates and node keys in $(pwd)"
