# Source this file (bash): exports CONTAINERS_CONF for podman.
# Run scripts/podman-setup.sh first (it writes the file).
_ferry_repo=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export CONTAINERS_CONF="$_ferry_repo/target/containers.conf"
unset _ferry_repo
