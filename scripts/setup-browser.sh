#!/usr/bin/env bash
# The web page's end-to-end test drives a real headless Chromium through Playwright.
# Playwright's own browser download cannot work offline, so we use the distribution's Chromium.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped"
else
  echo "note: chromium not found; install it (e.g. apt-get install chromium) to run the browser test"
fi
exit 0
