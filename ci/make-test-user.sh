#!/usr/bin/env bash
# Create the plain (unprivileged) test users if they do not exist:
#   chrun-test  runs the whole suite as a plain user (ci/test.sh);
#   chrun-evil  plays the hostile second local user in the --join attack tests
#               (tests/test_join_attacks.py), which root starts with runuser.
set -euo pipefail
for user in chrun-test chrun-evil; do
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd -m -s /bin/bash "$user"
        echo "make-test-user.sh: created user $user ($(id -u "$user"))"
    fi
done
