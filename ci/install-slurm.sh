#!/bin/bash
# Install Debian's Slurm (22.05 on Debian 12) and MUNGE, plus what
# ci/slurm-up.sh needs (util-linux for unshare/setsid, procps for pgrep,
# PMIx for srun --mpi=pmix). Idempotent: does nothing if all is there.
# Must run as root.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-slurm.sh: must run as root" >&2
    exit 1
fi

# slurm-wlm-basic-plugins carries mpi_pmix*.so (it depends on libpmix2);
# libpmix2 is listed explicitly so a change in Debian's dependencies does
# not silently drop srun --mpi=pmix.
pkgs=(munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins
      libpmix2 util-linux procps)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null \
            | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-slurm.sh: already installed: ${pkgs[*]}"
    exit 0
fi

echo "install-slurm.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Without systemd, the packages' postinst would start munged (and try
# slurmd/slurmctld) through their init scripts: daemons that slurm-up.sh
# did not start and slurm-down.sh would not stop. Deny service starts
# during the install, as Debian's container images do, unless a policy
# is already in place.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from chrun ci/install-slurm.sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

# Try without an update first (fast when the lists are fresh); if apt
# cannot find or fetch a package, update the lists and try again.
if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "install-slurm.sh: done ($(dpkg-query -W -f='${Version}' slurmd))"
