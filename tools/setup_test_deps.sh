#!/usr/bin/env bash
# Test-only system dependencies: Debian's Chromium for the browser tests (Playwright drives
# it through executable_path; no browser is ever downloaded) and ffmpeg-free video I/O via av.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian chromium for the browser tests" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium missing and not root; browser tests will be skipped" >&2
  fi
fi
