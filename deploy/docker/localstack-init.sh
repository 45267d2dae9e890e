#!/bin/bash
# LocalStack ready hook (mounted into /etc/localstack/init/ready.d): the streams and tables the
# compose stack's weir pipelines use. Idempotent; writes /tmp/weir-init-done last (the healthcheck).
set -euo pipefail

awslocal kinesis describe-stream-summary --stream-name enriched-good >/dev/null 2>&1 \
  || awslocal kinesis create-stream --stream-name enriched-good --shard-count 2
awslocal kinesis wait stream-exists --stream-name enriched-good

# Kinesis leases of weir-media (weir's lease schema: key `lease_key`).
awslocal dynamodb describe-table --table-name weir-leases >/dev/null 2>&1 \
  || awslocal dynamodb create-table --table-name weir-leases \
       --attribute-definitions AttributeName=lease_key,AttributeType=S \
       --key-schema AttributeName=lease_key,KeyType=HASH --billing-mode PAY_PER_REQUEST

# One item per viewer, expiring through TTL on `expires_at`.
if ! awslocal dynamodb describe-table --table-name viewer_profiles >/dev/null 2>&1; then
  awslocal dynamodb create-table --table-name viewer_profiles \
    --attribute-definitions AttributeName=viewer_id,AttributeType=S \
    --key-schema AttributeName=viewer_id,KeyType=HASH --billing-mode PAY_PER_REQUEST
  awslocal dynamodb update-time-to-live --table-name viewer_profiles \
    --time-to-live-specification Enabled=true,AttributeName=expires_at
fi

touch /tmp/weir-init-done
