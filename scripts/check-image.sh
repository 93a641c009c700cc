#!/usr/bin/env bash
# Build the daemon image and check what the manifests rely on: numeric non-root user 10001, OCI version
# label, no HEALTHCHECK, and `failover --version` on a read-only root filesystem with every capability
# dropped. Needs docker with a daemon and a reachable base image (not the case on the project's test
# machines, which is why `make test` checks the Dockerfile's text and not a build).
#   scripts/check-image.sh [TAG]
set -euo pipefail
tag="${1:-failover:check}"
version="$(sed -n 's/^ARG VERSION=//p' Dockerfile)"
docker build --build-arg VERSION="$version" --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t "$tag" .
user="$(docker inspect --format '{{.Config.User}}' "$tag")"
label="$(docker inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$tag")"
health="$(docker inspect --format '{{.Config.Healthcheck}}' "$tag")"
[ "$user" = "10001:10001" ] || { echo "image user is '$user', expected 10001:10001" >&2; exit 1; }
[ "$label" = "$version" ] || { echo "version label '$label', expected '$version'" >&2; exit 1; }
case "$health" in ""|"<nil>") ;; *) echo "the image has a HEALTHCHECK: $health" >&2; exit 1 ;; esac
out="$(docker run --rm --read-only --user 10001:10001 --cap-drop ALL "$tag" --version)"
case "$out" in "failover $version "*) echo "ok: $tag runs as 10001, read-only: $out" ;;
  *) echo "unexpected --version output: $out" >&2; exit 1 ;; esac
