#!/usr/bin/env bash
# One entry point for a fresh machine: installs what the project needs into .venv, then runs a job.
#   ./run.sh demo [args]    the main job (see README)
#   ./run.sh test [args]    the test suite (pytest args pass through)
#   ./run.sh setup          only the install
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import modeling_ret2, ret2, faiss, peft, matplotlib, sentence_transformers, pymilvus, fastapi, uvicorn, openai, selenium, httpx, xdist, mteb, ir_measures, bm25s" 2>/dev/null; then
        python3 -m venv .venv
        # torch is pinned in the same command as the project: an unpinned torch resolves to a multi-GB CUDA build.
        .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[dev,sentence-transformers,milvus,serve,mteb,keyword]"
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
