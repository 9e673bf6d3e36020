#!/bin/sh
# The lab's one-shot PKI (service `pki` in ../compose.yaml): the CA, then fresh certificates for the
# gateway and the agent. POSIX sh: the image's /bin/sh is dash.
#
# The CA key stays in CA_DIR, a volume only this job mounts: the gateway and the agent get their own
# key, their certificate and ca.pem in CERTS_DIR, never the key that could mint identities.
set -eu

TRUST_DOMAIN=${TRUST_DOMAIN:-plant1.example}
CA_DIR=${CA_DIR:-/var/lib/ztgate/ca}
CERTS_DIR=${CERTS_DIR:-/var/lib/ztgate/certs}

# The CA outlives `down` and `up` (only `down -v` removes its volume): a new CA on every start would
# make every certificate issued before it worthless. A half-present CA is not replaced either; the
# issue below then says what is wrong.
if [ ! -e "$CA_DIR/ca.pem" ] && [ ! -e "$CA_DIR/ca.key" ]; then
    ztgate ca init --dir "$CA_DIR" --trust-domain "$TRUST_DOMAIN"
fi

# Leaf certificates are short-lived by design (gateway 7 days; agent 72 hours, its maximum), so each
# run issues new ones; re-run this job and restart gateway and agent to renew them.
ztgate ca issue --dir "$CA_DIR" --out-dir "$CERTS_DIR" --name gateway --dns gateway gateway/lab/gw-1
ztgate ca issue --dir "$CA_DIR" --out-dir "$CERTS_DIR" --name agent --hours 72 agent/lab/hmi-1

# Copied, then renamed into place, so a reader never sees half a file.
cp "$CA_DIR/ca.pem" "$CERTS_DIR/.ca.pem.tmp"
mv -f "$CERTS_DIR/.ca.pem.tmp" "$CERTS_DIR/ca.pem"
