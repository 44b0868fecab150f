#!/bin/sh
# Creates a self-signed certificate for IMAP/POP3 at the first start unless
# one is mounted at /etc/dovecot/private/postern.pem (+ postern.key), then
# runs the command (dovecot -F).
set -eu
cert=/etc/dovecot/private/postern.pem
key=/etc/dovecot/private/postern.key
if [ ! -s "$cert" ] || [ ! -s "$key" ]; then
  name="${MAIL_HOSTNAME:-$(hostname -f 2>/dev/null || hostname)}"
  echo "dovecot: no certificate at $cert; creating a self-signed one for $name" >&2
  umask 077
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name" -keyout "$key" -out "$cert" 2>/dev/null
  chmod 0644 "$cert"
fi
exec "$@"
