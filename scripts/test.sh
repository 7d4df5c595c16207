#!/usr/bin/env bash
# The whole test suite: installs MariaDB when it is missing, then runs every
# test of the workspace (unit, simulation, real TCP, real mariadbd).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace "$@"
