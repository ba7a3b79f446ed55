#!/bin/sh
# Sends what GitHub sends on a push of `main` at COMMIT, signed with the
# webhook secret: usage `sh deliver.sh COMMIT [SECRET] [URL]`.
set -eu
commit=$1
secret=${2:-change-me-webhook-secret}
url=${3:-http://127.0.0.1:8740/hooks/ci}
body=$(printf '{"ref":"refs/heads/main","after":"%s","repository":{"clone_url":"git://127.0.0.1:9418/app.git","full_name":"example/app"}}' "$commit")
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" | sed 's/^.* //')
curl -sS -X POST "$url" \
  -H 'Content-Type: application/json' \
  -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: $(date +%s%N)" \
  -H "X-Hub-Signature-256: sha256=$sig" \
  --data "$body"
echo
