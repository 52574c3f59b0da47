#!/usr/bin/env bash
# Kiln's test run (README and CI use exactly this): install with launch.sh's own logic plus
# the test extras, then run pytest. Extra arguments go to pytest (bash tests/run.sh -k cli).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KILN_EXTRAS="test" ./launch.sh --install-only

# Browser tests drive a system Chromium through Playwright (its own browser download needs a
# CDN). In CI as root, install it; elsewhere the browser tests skip with a reason, and in CI
# (CI=true) they fail rather than skip.
# The X/Y/Z grid tests draw Chinese labels: a small CJK font (WenQuanYi Micro Hei, 1.6 MB) too.
CHROMIUM=/usr/bin/chromium
if [[ "${CI:-}" == "true" && "$(id -u)" == 0 ]]; then
    need=()
    [[ -x "$CHROMIUM" ]] || need+=(chromium)
    find /usr/share/fonts \( -name '*CJK*' -o -name 'wqy-*' \) 2>/dev/null | grep -q . || need+=(fonts-wqy-microhei)
    if (( ${#need[@]} )); then
        echo "kiln-tests: installing ${need[*]} for the browser and grid tests (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi
if [[ -x "$CHROMIUM" ]]; then
    export KILN_CHROMIUM="$CHROMIUM"
fi

echo "kiln-tests: running pytest $*"
set +e
.venv/bin/python -m pytest --durations=15 "$@"
rc=$?
set -e
if [[ "$rc" == 5 ]]; then
    echo "kiln-tests: FAILED: pytest collected no tests (exit 5); a test run that tests nothing is a failure" >&2
    exit 1
fi
exit "$rc"
