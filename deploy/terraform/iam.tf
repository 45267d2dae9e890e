# ---- execution role: what ECS itself needs to start the tasks (pull images, write logs) ----

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# ---- task roles: what the containers do, on these streams, tables and key only ----

# The collector task: the Snowplow collector writes both raw streams; the weir sidecar reads
# collector-good, keeps its leases and writes the profiles table.
data "aws_iam_policy_document" "collector_task" {
  statement {
    sid       = "CollectorWritesRawStreams"
    actions   = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:DescribeStream", "kinesis:DescribeStreamSummary", "kinesis:ListShards"]
    resources = [aws_kinesis_stream.collector_good.arn, aws_kinesis_stream.collector_bad.arn]
  }
  statement {
    sid       = "WeirReadsRawStream"
    actions   = ["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards", "kinesis:DescribeStreamSummary"]
    resources = [aws_kinesis_stream.collector_good.arn]
  }
  statement {
    sid       = "WeirLeases"
    actions   = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Scan"]
    resources = [aws_dynamodb_table.leases["sidecar"].arn]
  }
  statement {
    sid       = "WeirWritesProfiles"
    actions   = ["dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"]
    resources = [aws_dynamodb_table.profiles.arn]
  }
  statement {
    sid       = "EncryptedStreamsAndTables"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["kinesis.${var.region}.amazonaws.com", "dynamodb.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "collector_task" {
  name               = "${var.name}-collector-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "collector_task" {
  name   = "streams-and-tables"
  role   = aws_iam_role.collector_task.id
  policy = data.aws_iam_policy_document.collector_task.json
}

# The dashboard task: reads collector-good with its own leases; writes nothing else in AWS.
data "aws_iam_policy_document" "dashboard_task" {
  statement {
    sid       = "WeirReadsRawStream"
    actions   = ["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards", "kinesis:DescribeStreamSummary"]
    resources = [aws_kinesis_stream.collector_good.arn]
  }
  statement {
    sid       = "WeirLeases"
    actions   = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Scan"]
    resources = [aws_dynamodb_table.leases["dashboard"].arn]
  }
  statement {
    sid       = "EncryptedStreamsAndTables"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["kinesis.${var.region}.amazonaws.com", "dynamodb.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "dashboard_task" {
  name               = "${var.name}-dashboard-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "dashboard_task" {
  name   = "stream-and-leases"
  role   = aws_iam_role.dashboard_task.id
  policy = data.aws_iam_policy_document.dashboard_task.json
}
