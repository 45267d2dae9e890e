terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}

# Credentials and region come from the standard AWS chain of whoever runs Terraform (SSO profile,
# CI's OIDC role, ...): nothing in these files.
provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "weir-live-viewer", ManagedBy = "terraform" }, var.tags)
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
