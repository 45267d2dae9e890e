resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

locals {
  log_options = {
    for k, g in aws_cloudwatch_log_group.this : k => {
      "awslogs-group"         = g.name
      "awslogs-region"        = var.region
      "awslogs-stream-prefix" = k
    }
  }

  # weir's settings that differ from the configs baked into the image (WEIR__ + key path).
  weir_sidecar_env = {
    AWS_REGION                = var.region
    WEIR__SOURCE__STREAM      = aws_kinesis_stream.collector_good.name
    WEIR__SOURCE__LEASE_TABLE = aws_dynamodb_table.leases["sidecar"].name
    WEIR__SINK__TABLE         = aws_dynamodb_table.profiles.name
    WEIR__SINK__TTL           = "${var.profile_ttl_days}d"
  }
  weir_dashboard_env = {
    AWS_REGION                = var.region
    WEIR__SOURCE__STREAM      = aws_kinesis_stream.collector_good.name
    WEIR__SOURCE__LEASE_TABLE = aws_dynamodb_table.leases["dashboard"].name
  }

  # The Snowplow collector is configured without a file: Lightbend config system properties.
  collector_java_opts = join(" ", [
    "-XX:MaxRAMPercentage=75",
    "-Djava.io.tmpdir=/tmp",
    "-Dcollector.license.accept=${var.accept_snowplow_license}",
    "-Dcollector.interface=0.0.0.0",
    "-Dcollector.port=8080",
    "-Dcollector.streams.good.name=${aws_kinesis_stream.collector_good.name}",
    "-Dcollector.streams.good.region=${var.region}",
    "-Dcollector.streams.bad.name=${aws_kinesis_stream.collector_bad.name}",
    "-Dcollector.streams.bad.region=${var.region}",
  ])

  # weir's container, shared by both task definitions.
  weir_container = {
    image                  = var.weir_image
    essential              = true
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    linuxParameters        = { capabilities = { drop = ["ALL"] }, initProcessEnabled = true }
    stopTimeout            = 45 # weir drains on SIGTERM: writes what it read, checkpoints, releases leases
    healthCheck = {
      command     = ["CMD", "weir-healthcheck"] # GET /healthz on :9464 (in the image)
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
  }
}

# ---- the collector service: Snowplow collector + weir sidecar in each task ----

resource "aws_ecs_task_definition" "collector" {
  family                   = "${var.name}-collector"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = 2048
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.collector_task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "collector-tmp"
  }
  volume {
    name = "weir-cache"
  }

  container_definitions = jsonencode([
    {
      name                   = "collector"
      image                  = var.collector_image
      essential              = true
      readonlyRootFilesystem = true
      memoryReservation      = 1024
      linuxParameters        = { capabilities = { drop = ["ALL"] } }
      portMappings           = [{ containerPort = 8080, protocol = "tcp" }]
      environment            = [{ name = "JAVA_OPTS", value = local.collector_java_opts }]
      mountPoints            = [{ sourceVolume = "collector-tmp", containerPath = "/tmp" }]
      logConfiguration       = { logDriver = "awslogs", options = local.log_options["collector"] }
    },
    merge(local.weir_container, {
      name              = "weir"
      command           = ["run", "deploy/config/aws-sidecar.toml"]
      memoryReservation = 128 # peak RSS 20-110 MiB in the benchmarks (deploy/README.md)
      portMappings      = [{ containerPort = 9464, protocol = "tcp" }]
      environment       = [for k, v in local.weir_sidecar_env : { name = k, value = v }]
      mountPoints       = [{ sourceVolume = "weir-cache", containerPath = "/var/cache/weir" }]
      logConfiguration  = { logDriver = "awslogs", options = merge(local.log_options["collector"], { "awslogs-stream-prefix" = "weir" }) }
    }),
  ])
}

resource "aws_ecs_service" "collector" {
  name                              = "${var.name}-collector"
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.collector.arn
  desired_count                     = var.collector_count
  launch_type                       = "FARGATE"
  health_check_grace_period_seconds = 60
  propagate_tags                    = "SERVICE"

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.collector.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.collector.arn
    container_name   = "collector"
    container_port   = 8080
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  depends_on = [aws_lb_listener.collector]
}

# ---- the dashboard service: one weir with the live dashboard ----

resource "aws_ecs_task_definition" "dashboard" {
  family                   = "${var.name}-dashboard"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.dashboard_task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "weir-data"
  }
  volume {
    name = "weir-cache"
  }

  container_definitions = jsonencode([
    merge(local.weir_container, {
      name              = "weir"
      command           = ["run", "deploy/config/aws-dashboard.toml"]
      memoryReservation = 256
      portMappings      = [{ containerPort = 8080, protocol = "tcp" }, { containerPort = 9464, protocol = "tcp" }]
      environment       = [for k, v in local.weir_dashboard_env : { name = k, value = v }]
      mountPoints = [
        { sourceVolume = "weir-data", containerPath = "/var/lib/weir" },
        { sourceVolume = "weir-cache", containerPath = "/var/cache/weir" },
      ]
      logConfiguration = { logDriver = "awslogs", options = local.log_options["dashboard"] }
    }),
  ])
}

resource "aws_ecs_service" "dashboard" {
  name            = "${var.name}-dashboard"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.dashboard.arn
  desired_count   = 1
  launch_type     = "FARGATE"
  propagate_tags  = "SERVICE"

  # One task at a time: stop the old one before starting the new (it owns the leases).
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.dashboard.id]
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = var.dashboard_public ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.dashboard[0].arn
      container_name   = "weir"
      container_port   = 8080
    }
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}
