#!/usr/bin/env bash
# Kiln's test run (README and CI use exactly this): install with launch.sh's own logic plus
# the test extras, then run pytest. Extra arguments go to pytest (bash tests/run.sh -k cli).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KILN_EXTRAS="test" ./launch.sh --install-only

# Browser tests drive a system Chromium through Playwright (its own browser download needs a
# CDN). In CI as root, install it; elsewhere the browser tests skip with a reason, and in CI
# (CI=true) they fail rather than skip.
CHROMIUM=/usr/bin/chromium
if [[ ! -x "$CHROMIUM" && "${CI:-}" == "true" && "$(id -u)" == 0 ]]; then
    echo "kiln-tests: installing chromium for the browser tests (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
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
