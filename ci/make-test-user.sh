#!/usr/bin/env bash
# Create the plain (unprivileged) test user chrun-test if it does not exist.
set -euo pipefail
if ! id -u chrun-test >/dev/null 2>&1; then
    useradd -m -s /bin/bash chrun-test
    echo "make-test-user.sh: created user chrun-test ($(id -u chrun-test))"
fi
