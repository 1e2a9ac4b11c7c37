#!/usr/bin/env bash
# Start a single-node Ceph RADOS Gateway (S3) on loopback, everything under one directory.
#
#   scripts/rgw/start.sh DIR [PORT]
#
# One monitor, one OSD on memstore (data lives in RAM; size it with HYPER_RGW_MEMSTORE_MB,
# default 6144), one radosgw (beast frontend with tcp_nodelay). Creates an S3 user and a
# bucket, then writes DIR/env with the variables the tests and benchmarks read:
#   HYPER_TEST_S3_ENDPOINT, HYPER_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#   AWS_REGION.
# Stop with scripts/rgw/stop.sh DIR (kills by the pid files).
# Needs: ceph-mon ceph-osd radosgw ceph-common (scripts/install-deps.sh), curl, uuidgen.
set -euo pipefail

DIR=${1:?usage: start.sh DIR [PORT]}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The preferred port if it is free, else a random free one (so two clusters can coexist).
pick_port() {
  local p=$1
  for _ in $(seq 1 50); do
    if port_free "$p" && { [ -z "${2:-}" ] || port_free $((p + $2)); }; then
      echo "$p"
      return
    fi
    p=$((20000 + RANDOM % 20000))
  done
  echo "rgw/start.sh: no free port found" >&2
  exit 1
}
PORT=${2:-${HYPER_RGW_PORT:-$(pick_port 7480)}}
MEM_MB=${HYPER_RGW_MEMSTORE_MB:-6144}
BUCKET=${HYPER_RGW_BUCKET:-hyper-test}
ACCESS_KEY=${HYPER_RGW_ACCESS_KEY:-hyperaccess}
SECRET_KEY=${HYPER_RGW_SECRET_KEY:-hypersecretkey0123456789}
MON_V2=${HYPER_RGW_MON_PORT:-$(pick_port 3300 3489)}
MON_V1=$((MON_V2 + 3489)) # 6789 for the default 3300

for tool in ceph-mon ceph-osd radosgw ceph ceph-authtool monmaptool radosgw-admin curl uuidgen; do
  command -v "$tool" >/dev/null || { echo "rgw/start.sh: missing $tool (run scripts/install-deps.sh)" >&2; exit 1; }
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ -e "$DIR/ceph.conf" ]; then
  echo "rgw/start.sh: $DIR already holds a cluster; stop it and remove the directory first" >&2
  exit 1
fi
for port in "$PORT" "$MON_V2" "$MON_V1"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "rgw/start.sh: port $port on 127.0.0.1 is already in use" >&2
    exit 1
  fi
done
mkdir -p "$DIR"/{run,log,mon/a,osd/0,rgw}
FSID=$(uuidgen)
CONF="$DIR/ceph.conf"
KEYRING="$DIR/keyring"

cat >"$CONF" <<CONF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $KEYRING
run dir = $DIR/run
admin socket = $DIR/run/\$cluster-\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
mon data = $DIR/mon/\$id
osd data = $DIR/osd/\$id
osd objectstore = memstore
memstore device bytes = $((MEM_MB * 1024 * 1024))
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd max object name len = 256
osd max object namespace len = 64
debug ms = 0

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT tcp_nodelay=1
rgw data = $DIR/rgw
rgw dns name = localhost
# Deleted objects' data goes through the gateway's garbage collector (default: 2 hours
# later); memstore keeps it in RAM until then, so collect it at once.
rgw gc obj min wait = 0
rgw gc processor period = 5
rgw gc processor max time = 5
CONF

C=(-c "$CONF")
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]" "$DIR/monmap" >/dev/null
ceph-authtool --create-keyring "$KEYRING" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
  --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' \
  --cap osd 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null

ceph-mon "${C[@]}" --mkfs -i a --monmap "$DIR/monmap" --keyring "$KEYRING" >/dev/null 2>&1
ceph-mon "${C[@]}" -i a 2>>"$DIR/log/mon-start.log"

# Wait for the monitor to answer.
for _ in $(seq 1 100); do
  if timeout 5 ceph "${C[@]}" -s >/dev/null 2>&1; then break; fi
  sleep 0.2
done

OSD_UUID=$(uuidgen)
timeout 30 ceph "${C[@]}" osd new "$OSD_UUID" 0 >/dev/null
ceph-osd "${C[@]}" -i 0 --mkfs --osd-uuid "$OSD_UUID" >/dev/null 2>&1
ceph-osd "${C[@]}" -i 0 2>>"$DIR/log/osd-start.log"

# Wait for the OSD to be up (the gateway creates its pools on first start).
for _ in $(seq 1 150); do
  if timeout 5 ceph "${C[@]}" osd stat 2>/dev/null | grep -q '1 up'; then break; fi
  sleep 0.2
done

radosgw "${C[@]}" -n client.rgw.a 2>>"$DIR/log/rgw-start.log"

ready=0
for _ in $(seq 1 300); do
  if curl -fs -o /dev/null "http://127.0.0.1:$PORT/"; then
    ready=1
    break
  fi
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "rgw/start.sh: radosgw did not answer on 127.0.0.1:$PORT; logs in $DIR/log" >&2
  tail -n 20 "$DIR/log/client.rgw.a.log" >&2 || true
  exit 1
fi

timeout 60 radosgw-admin "${C[@]}" user create --uid=hyper --display-name=hyper \
  --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >/dev/null

ENDPOINT="http://127.0.0.1:$PORT"
cat >"$DIR/env" <<ENV
export HYPER_TEST_S3_ENDPOINT=$ENDPOINT
export HYPER_TEST_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=us-east-1
export HYPER_RGW_DIR=$DIR
ENV

# Create the bucket (a signed PUT /bucket; node and the installed SDK do the signing).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
(cd "$ROOT" && . "$DIR/env" && node --no-warnings --input-type=module -e "
import { S3Client, CreateBucketCommand } from '@aws-sdk/client-s3';
const c = new S3Client({ endpoint: process.env.HYPER_TEST_S3_ENDPOINT, forcePathStyle: true, region: 'us-east-1',
  requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
try { await c.send(new CreateBucketCommand({ Bucket: process.env.HYPER_TEST_S3_BUCKET })); }
catch (e) { if (e.name !== 'BucketAlreadyOwnedByYou' && e.name !== 'BucketAlreadyExists') throw e; }
c.destroy();
")
echo "rgw: ready at $ENDPOINT (bucket $BUCKET, env in $DIR/env)"
