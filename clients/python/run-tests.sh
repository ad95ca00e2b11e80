#!/usr/bin/env bash
# Install the package with its test extra, then run its tests against the real
# server binary ($LEASEHOLD_BIN, else <repo>/.build/debug/leasehold, built if missing).
# Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python3 -m pip install --quiet --disable-pip-version-check "${here}[test]"
cd "${here}"
exec python3 -m pytest tests -p no:cacheprovider "$@"
