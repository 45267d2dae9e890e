#!/bin/bash
# The image's HEALTHCHECK: GET $WEIR_HEALTH_URL (http://host:port/path, default weir's /healthz)
# and succeed on a 200. Plain bash (/dev/tcp): the image needs no curl.
set -eu
url="${WEIR_HEALTH_URL:-http://127.0.0.1:9464/healthz}"
rest="${url#http://}"
hostport="${rest%%/*}"
path="/${rest#*/}"
[ "$rest" = "$hostport" ] && path=/
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$host" = "$port" ] && port=80
exec 3<>"/dev/tcp/$host/$port"
printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
read -r _ status _ <&3
[ "$status" = 200 ]
