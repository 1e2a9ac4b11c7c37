#!/usr/bin/env bash
# Install the system packages the tests and benchmarks need (Debian 12, as root; uses sudo
# otherwise). Idempotent and fast when everything is already there: apt is only called for
# what is missing.
#   Ceph RGW (the S3 server of the tests): ceph-mon ceph-osd radosgw ceph-common
#   NBD tools: libnbd-bin python3-libnbd nbdkit qemu-utils fio nbdfuse fuse3 e2fsprogs
#   Benchmark peers: nbdkit-plugin-python python3-boto3 (nbdkit's S3 plugin), s3backer
#   Build tools: g++ make python3 (npm ci compiles the lz4 binding and hyper's native addon with node-gyp)
set -euo pipefail

PKGS=(
  ceph-mon ceph-osd radosgw ceph-common
  libnbd-bin python3-libnbd nbdkit qemu-utils fio nbdfuse fuse3 e2fsprogs
  nbdkit-plugin-python python3-boto3 s3backer
  curl uuid-runtime ca-certificates
  g++ make python3
)

SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: run as root (or install sudo)" >&2; exit 1; }
  SUDO=(sudo)
fi
command -v apt-get >/dev/null || { echo "install-deps.sh: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }

missing=()
for p in "${PKGS[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then continue; fi
  # Virtual packages (nbdfuse is provided by another package): present if the command is.
  if command -v "$p" >/dev/null 2>&1; then continue; fi
  missing+=("$p")
done

if [ "${#missing[@]}" = 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)
"${APT[@]}" update -qq
"${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
