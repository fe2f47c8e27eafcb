#!/bin/sh
# The web UI's browser tests drive Debian's chromium through Playwright (Playwright's own browser
# download needs the internet). CI runs this before pytest: it installs chromium with apt-get when
# it is missing, and fails with one clear line when it cannot. OPENSD_SKIP_BROWSER_TESTS=1 (local
# development only) skips both the install and the tests; OPENSD_CHROMIUM names another binary.
set -eu
if [ "${OPENSD_SKIP_BROWSER_TESTS:-}" = 1 ] || [ -n "${OPENSD_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
fi
if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "install_test_browser: chromium is missing and apt-get could not install it (root needed);" \
         "install Debian's chromium, or set OPENSD_SKIP_BROWSER_TESTS=1 to skip the browser tests" >&2
    exit 1
fi
