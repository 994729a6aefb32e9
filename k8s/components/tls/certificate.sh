#!/bin/sh
# A self-signed certificate for the TLS walkthroughs' names, into tls.crt and tls.key in the
# current directory (or DIR, the first argument), for the Secret tcp-echo-tls:
#   sh k8s/components/tls/certificate.sh && kubectl create secret tls tcp-echo-tls --cert=tls.crt --key=tls.key
# Clients trust it with `--ca tls.crt` (tcp-echo probe) or `-CAfile tls.crt` (openssl). It is
# an end-entity certificate (CA:FALSE): rustls refuses a CA certificate used as a server's.
set -eu
dir=${1:-.}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj /CN=tcp-echo \
  -addext 'subjectAltName=DNS:v1.example.com,DNS:v2.example.com,DNS:echo.example.com,DNS:localhost' \
  -addext 'basicConstraints=critical,CA:FALSE' \
  -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
echo "wrote $dir/tls.crt and $dir/tls.key"
