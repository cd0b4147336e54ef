#!/usr/bin/env bash
# README command 1: installs what is missing (scripts/setup.sh), then runs a sample Galaxy job
# through stage → pod → collect on a local S3 server and podman, and prints a summary.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
source "$repo/scripts/podman-env.sh"
exec "$repo/.venv/bin/python" -W ignore::DeprecationWarning "$repo/scripts/demo.py"
