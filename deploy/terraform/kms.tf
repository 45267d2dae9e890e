# One customer-managed key encrypts the streams, the tables and the log groups.
resource "aws_kms_key" "this" {
  description             = "${var.name}: Kinesis streams, DynamoDB tables, CloudWatch logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  # A key policy's "*" resource is the key itself.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # The account administers the key; roles get its use through IAM policies (iam.tf).
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        # CloudWatch Logs encrypts this deployment's log groups with it.
        Sid       = "CloudWatchLogs"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*${var.name}*"
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
