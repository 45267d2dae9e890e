variable "region" {
  description = "AWS region to deploy into, e.g. eu-west-1."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name (streams, tables, cluster, roles, log groups)."
  type        = string
  default     = "weir-live-viewer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,27}$", var.name))
    error_message = "name: 3-28 characters, lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# ---- network (an existing VPC) ----

variable "vpc_id" {
  description = "VPC to deploy into."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the internet-facing load balancer (at least two availability zones)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets of the ECS tasks (no public IPs). They need a route to the AWS APIs (NAT gateway or VPC endpoints for Kinesis, DynamoDB, CloudWatch Logs, and the image registry)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the load balancer's HTTPS listeners (the collector's domain, and the dashboard's if public)."
  type        = string
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket receiving the load balancer's access logs (with the ELB log-delivery bucket policy)."
  type        = string
}

variable "collector_allowed_cidrs" {
  description = "Who may send events to the collector (HTTPS 443 on the load balancer): trackers on the internet by default."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "dashboard_public" {
  description = "Serve the dashboard through the load balancer (HTTPS on dashboard_public_port) to dashboard_public_cidrs. false: the dashboard is only reachable inside the VPC, from dashboard_private_cidrs."
  type        = bool
  default     = false
}

variable "dashboard_public_port" {
  description = "Load balancer port of the dashboard when dashboard_public is true."
  type        = number
  default     = 8443
}

variable "dashboard_public_cidrs" {
  description = "Who may open the dashboard through the load balancer when dashboard_public is true (e.g. the office)."
  type        = list(string)
  default     = []
}

variable "dashboard_private_cidrs" {
  description = "Networks inside the VPC (VPN, bastion) that may reach the dashboard task directly on port 8080."
  type        = list(string)
  default     = []
}

variable "metrics_allowed_cidrs" {
  description = "Networks (e.g. the Prometheus servers) that may scrape weir's /metrics on port 9464 of the tasks."
  type        = list(string)
  default     = []
}

# ---- images ----

variable "weir_image" {
  description = "weir image built from deploy/docker/Dockerfile, pinned by tag or digest (e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/weir:0.1.0)."
  type        = string
}

variable "collector_image" {
  description = "Snowplow collector image writing to Kinesis."
  type        = string
  default     = "snowplow/scala-stream-collector-kinesis:3.1.0"
}

variable "accept_snowplow_license" {
  description = "The Snowplow collector 3.x runs only once you accept the Snowplow Limited Use License (https://docs.snowplow.io/limited-use-license-1.0). Set true if you do."
  type        = bool
  default     = false
}

# ---- sizes ----

variable "collector_count" {
  description = "Tasks of the collector service (each: collector + weir sidecar; the sidecars share the stream's shards)."
  type        = number
  default     = 2
}

variable "collector_shards" {
  description = "Shards of the raw stream collector-good (1 MB/s or 1,000 records/s in per shard)."
  type        = number
  default     = 2
}

variable "stream_retention_hours" {
  description = "How long the Kinesis streams keep records (24-8760): how far weir can replay after an outage."
  type        = number
  default     = 24
}

variable "profile_ttl_days" {
  description = "A viewer's profile expires (DynamoDB TTL on expires_at) this many days after its last update (weir's WEIR__SINK__TTL)."
  type        = number
  default     = 30
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of every container's logs."
  type        = number
  default     = 365
}

variable "deletion_protection" {
  description = "Protect the load balancer and the DynamoDB tables from deletion (set false to destroy a test stack)."
  type        = bool
  default     = true
}
