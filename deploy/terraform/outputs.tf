output "collector_url" {
  description = "Point the trackers here (map a DNS name covered by certificate_arn to the load balancer)."
  value       = "https://${aws_lb.this.dns_name}"
}

output "dashboard_url" {
  description = "The live dashboard through the load balancer, when dashboard_public; otherwise null (reach the dashboard task's private IP on port 8080 from dashboard_private_cidrs)."
  value       = var.dashboard_public ? "https://${aws_lb.this.dns_name}:${var.dashboard_public_port}/" : null
}

output "collector_good_stream" {
  description = "Raw collector stream read by weir (and by Snowplow Enrich if you run it)."
  value       = aws_kinesis_stream.collector_good.name
}

output "collector_bad_stream" {
  description = "The collector's bad-rows stream."
  value       = aws_kinesis_stream.collector_bad.name
}

output "profiles_table" {
  description = "DynamoDB table with one live profile per viewer (TTL on expires_at)."
  value       = aws_dynamodb_table.profiles.name
}

output "lease_tables" {
  description = "weir's Kinesis lease tables, by consumer (sidecar, dashboard)."
  value       = { for k, t in aws_dynamodb_table.leases : k => t.name }
}

output "ecs_cluster" {
  description = "ECS cluster running the collector and dashboard services."
  value       = aws_ecs_cluster.this.name
}

output "task_role_arns" {
  description = "IAM task roles (least privilege) of the collector and dashboard tasks; the Kubernetes service account can use the same permissions."
  value       = { collector = aws_iam_role.collector_task.arn, dashboard = aws_iam_role.dashboard_task.arn }
}

output "kms_key_arn" {
  description = "Key encrypting the streams, tables and log groups."
  value       = aws_kms_key.this.arn
}
