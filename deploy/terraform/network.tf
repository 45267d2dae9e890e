# Only two ways in: trackers → load balancer 443 → collector 8080, and the dashboard (through the
# load balancer when dashboard_public, else only from dashboard_private_cidrs inside the VPC).
# No SSH, no public IPs on the tasks.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Load balancer: HTTPS from trackers (and dashboard users when public)"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_collector" {
  for_each = toset(var.collector_allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "Trackers to the collector (HTTPS)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "alb_dashboard" {
  for_each = toset(var.dashboard_public ? var.dashboard_public_cidrs : [])

  security_group_id = aws_security_group.alb.id
  description       = "Dashboard users (HTTPS)"
  ip_protocol       = "tcp"
  from_port         = var.dashboard_public_port
  to_port           = var.dashboard_public_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_collector" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the collector tasks"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.collector.id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_dashboard" {
  count = var.dashboard_public ? 1 : 0

  security_group_id            = aws_security_group.alb.id
  description                  = "To the dashboard task"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.dashboard.id
}

resource "aws_security_group" "collector" {
  name        = "${var.name}-collector"
  description = "Collector tasks: the collector port from the load balancer only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "collector_from_alb" {
  security_group_id            = aws_security_group.collector.id
  description                  = "Load balancer to the collector"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "dashboard" {
  name        = "${var.name}-dashboard"
  description = "Dashboard task: the dashboard port from the load balancer (if public) or the given private networks"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "dashboard_from_alb" {
  count = var.dashboard_public ? 1 : 0

  security_group_id            = aws_security_group.dashboard.id
  description                  = "Load balancer to the dashboard"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_ingress_rule" "dashboard_private" {
  for_each = toset(var.dashboard_private_cidrs)

  security_group_id = aws_security_group.dashboard.id
  description       = "Private networks to the dashboard"
  ip_protocol       = "tcp"
  from_port         = 8080
  to_port           = 8080
  cidr_ipv4         = each.value
}

# weir's /metrics for Prometheus, on both services.
resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each = {
    for pair in setproduct(["collector", "dashboard"], var.metrics_allowed_cidrs) : "${pair[0]}-${pair[1]}" => pair
  }

  security_group_id = each.value[0] == "collector" ? aws_security_group.collector.id : aws_security_group.dashboard.id
  description       = "Prometheus to weir's /metrics"
  ip_protocol       = "tcp"
  from_port         = 9464
  to_port           = 9464
  cidr_ipv4         = each.value[1]
}

# Tasks call the AWS APIs (Kinesis, DynamoDB, CloudWatch Logs, the image registry) over HTTPS.
resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  for_each = {
    collector = aws_security_group.collector.id
    dashboard = aws_security_group.dashboard.id
  }

  security_group_id = each.value
  description       = "HTTPS to the AWS APIs and the image registry"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
