#!/bin/sh
# The container's start: the tiny guest image into the data volume when it has none, then
# vm-service with the given arguments (default: serve).
set -eu
images="${VM_BASE_DIR:-/var/lib/vm-service}/images"
if [ ! -e "$images/tiny/manifest.json" ]; then
  mkdir -p "$images"
  cp -a /opt/vm-service/images/tiny "$images/tiny"
fi
exec /usr/local/bin/vm-service "$@"
