#!/usr/bin/env bash
# GET of one key with wrk against etcd and ringd side by side: perf/wrk.sh get.
# Usage: perf/get_one_key.sh [duration_secs] [connections] [rounds]
exec "$(dirname "$0")/wrk.sh" get "$@"
