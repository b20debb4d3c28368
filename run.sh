#!/usr/bin/env bash
# One entry point for a fresh machine: installs what the project needs into .venv, then runs a job.
#   ./run.sh demo [args]    the main job (see README)
#   ./run.sh test [args]    the test suite (pytest args pass through)
#   ./run.sh setup          only the install
set -euo pipefail
cd "$(dirname "$0")"

# The package is installed in setuptools' strict editable mode: a tree of links to the checkout's files, on a path entry
# of its own that wins over a same-named folder (a checkout named `ret2/` with `data/` in it, seen from its parent,
# shadows the default editable finder). The tree holds the files there were at install time: a file added or removed,
# or a changed pyproject.toml, re-links it (the stamp below).
STAMP=.venv/ret2-install.stamp
stamp() { { cat pyproject.toml; find configuration_ret2 modeling_ret2 ret2 eval -not -path '*/__pycache__*' | sort; } | sha256sum; }

setup() {
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import modeling_ret2, ret2, faiss, peft, matplotlib, sentence_transformers, pymilvus, fastapi, uvicorn, prometheus_client, openai, selenium, httpx, xdist, mteb, ir_measures, bm25s, psutil" 2>/dev/null; then
        python3 -m venv .venv
        # torch is pinned in the same command as the project: an unpinned torch resolves to a multi-GB CUDA build.
        .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[dev,sentence-transformers,milvus,serve,mteb,keyword]" \
            --config-settings editable_mode=strict
        stamp > "$STAMP"
    elif [ "$(stamp)" != "$(cat "$STAMP" 2>/dev/null)" ]; then
        relink() { .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "$@" -e . --config-settings editable_mode=strict; }
        relink --no-build-isolation 2>/dev/null || relink   # a .venv older than the dev extra's setuptools builds isolated
        stamp > "$STAMP"
    fi
}

job="${1:-demo}"
shift || true
setup
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
case "$job" in
    setup) ;;
    demo) exec .venv/bin/python -m ret2.demo "$@" ;;
    # one pytest worker per core (pytest-xdist), a test file per worker at a time: a file's module fixtures are built once
    test) HF_HUB_OFFLINE=1 exec .venv/bin/python -m pytest -n auto --dist loadfile "$@" ;;
    *) echo "unknown job '$job'; valid: demo, test, setup" >&2; exit 2 ;;
esac
