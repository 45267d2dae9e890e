# Kinesis: the collector's raw streams (Thrift CollectorPayloads). weir reads collector-good;
# an existing Snowplow Enrich can read it too.
resource "aws_kinesis_stream" "collector_good" {
  name             = "${var.name}-collector-good"
  shard_count      = var.collector_shards
  retention_period = var.stream_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.this.arn

  stream_mode_details {
    stream_mode = "PROVISIONED"
  }
}

resource "aws_kinesis_stream" "collector_bad" {
  name             = "${var.name}-collector-bad"
  shard_count      = 1
  retention_period = var.stream_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.this.arn

  stream_mode_details {
    stream_mode = "PROVISIONED"
  }
}

# One item per viewer, written by weir's DynamoDB sink (conditional on `version`), expired by TTL.
resource "aws_dynamodb_table" "profiles" {
  name                        = "${var.name}-viewer-profiles"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "viewer_id"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "viewer_id"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.this.arn
  }
}

# Kinesis leases and checkpoints (weir's lease schema: key `lease_key`): one table per consumer
# of collector-good, as KCL applications have one each.
resource "aws_dynamodb_table" "leases" {
  for_each = toset(["sidecar", "dashboard"])

  name                        = "${var.name}-${each.key}-leases"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "lease_key"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "lease_key"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.this.arn
  }
}

resource "aws_cloudwatch_log_group" "this" {
  for_each = toset(["collector", "dashboard"])

  name              = "/ecs/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}
