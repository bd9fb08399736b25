#!/usr/bin/env bash
# A real headless browser for the lineage page tests (idempotent):
#   Debian `chromium` and `chromium-driver` (apt; `playwright install` cannot download a
#   browser here), a font, and pip `playwright` (test extra), driving /usr/bin/chromium through
#   `chromium.launch(executable_path=...)`. Checks that playwright launches it and renders a page.
# Writes to .ci/env.sh: HITHER_TEST_CHROMIUM (the executable), HITHER_TEST_CHROMEDRIVER.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$HITHER_CI_DIR"
T0=$(now_ms)
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

apt_install chromium chromium-driver fonts-dejavu-core || die "could not install chromium"
[[ -x "$CHROMIUM" ]] || die "$CHROMIUM missing after installing chromium"
ensure_test_extra playwright || die "playwright could not be installed"

# Launch, render, click, screenshot: the steps the page tests take.
timeout 120 "$CI_PYTHON" - "$CHROMIUM" >>"$D/log/browser-check.log" 2>&1 <<'EOF' \
    || { show_log "$D/log/browser-check.log"; die "playwright could not drive $CHROMIUM"; }
import sys
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=sys.argv[1], headless=True)
    page = browser.new_page()
    page.set_content("<button onclick=\"this.textContent='clicked'\">hither</button>")
    page.click("button")
    assert page.text_content("button") == "clicked"
    assert len(page.screenshot()) > 1000
    print("chromium", browser.version, "ok")
    browser.close()
EOF
log "$(tail -n1 "$D/log/browser-check.log")"

env_set HITHER_TEST_CHROMIUM "$CHROMIUM"
env_set HITHER_TEST_CHROMEDRIVER "$CHROMEDRIVER"
log "setup-browser done in $(elapsed "$T0")"
