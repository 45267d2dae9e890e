# Minimal configuration for HTTP target (only required options)

target {
  use "http" {
    # URL endpoint
    url = "https://acme.com/x"
  }
}
