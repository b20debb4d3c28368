"""The documentation runs as written: every ```bash / ```sh / ```shell / ```python block of README.md and docs/*.md,
except those marked `<!-- not run: reason -->` on the line before their fence; every relative link points to an
existing file (and heading); the README stays a landing page.

Blocks run in page order in one temporary working folder per page (a later block may use what an earlier one wrote,
as a reader going down the page would), which holds what the examples name: a tiny ReT-2 at the demo's path
`runs/demo/seed-42/ret2-model`, a `photos/` folder of captioned images, the query images `query.jpg`, `q.jpg`, `d1.jpg`,
`d2.jpg` and a `pairs.jsonl`. A shell block runs in a new bash (`-e`: every line must succeed) with the checkout's
`.venv/bin` first on PATH and `HF_HUB_OFFLINE=1`; a python block runs in a fresh namespace in this process, with the
page's folder as working directory. Selecting one block (`-k`) first runs the page's earlier blocks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import processes
from conftest import REPO, WORDS, pattern

from ret2.tiny import tiny_model_and_processor

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run\b:?\s*(.*?)\s*-->\s*$")
DEMO_MODEL = "runs/demo/seed-42/ret2-model"
README_LIMIT = 12_000
CAPTIONS = ["red circle", "blue square", "green star", "yellow triangle", "big red square", "small blue star",
            "red star on the left", "green circle at the top"]  # fmt: skip

# What a block prints, where it prints results: (page, a piece of the block's code) -> a substring of its stdout.
EXPECTED_OUTPUT = {
    ("evaluation.md", "ret2-eval-mbeir --model runs/demo/seed-42/ret2-model --data-root data/synthetic"): "| **Average** |",
    ("README.md", "ret2-eval-mbeir"): "| **Average** |",
    ("using.md", "scores = queries @ documents.T"): "(2, 2)",
    ("using.md", "model.similarity("): "torch.Size([2, 2])",
    ("using.md", "captions[i] for i in row"): "[['",
    ("using.md", "SentenceTransformer("): "torch.Size([2, 2])",
    ("using.md", "dtype=torch.bfloat16).eval()"): "torch.bfloat16",
    ("publishing.md", "ls staged/"): "model.safetensors",
    ("your-collection.md", "ret2-rag"): "What is shown in the picture?",
    ("your-collection.md", 'filter={"album": "trip", "year": {"$gte": 2022}}'): "['beach']",
    ("your-collection.md", 'mode="keyword"'): "['sofa', 'beach']",
    ("mteb.md", "model = Ret2Encoder(\"runs/demo"): "Ret2Encoder 7",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str  # "shell" or "python"
    code: str
    not_run: str | None  # the marker's reason ("" for a marker without one); None when the block is to run

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The runnable-language code blocks of a markdown page, in order, with their not-run markers."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if language in LANGUAGES:
            marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
            code = "\n".join(line[len(indent):] for line in lines[i + 1 : end]) + "\n"
            blocks.append(Block(page, i + 1, LANGUAGES[language], code, marker.group(1) if marker else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def test_the_pages_have_blocks_to_run_and_every_not_run_marker_gives_a_reason():
    """A marker with no reason is refused; the README's example and each guide's runnable blocks are found."""
    assert [b.id for b in ALL_BLOCKS if b.not_run == ""] == []
    runnable = {b.page.name for b in ALL_BLOCKS if b.not_run is None}
    assert {"README.md", "using.md", "fine-tuning.md", "evaluation.md", "your-collection.md", "publishing.md"} <= runnable
    readme = [b for b in ALL_BLOCKS if b.page.name == "README.md" and b.not_run is None]
    assert readme[0].language == "python" and "model.encode(" in readme[0].code and "index.search(" in readme[0].code


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> Path:
    """What the examples name, in one folder that each page's workspace copies."""
    root = tmp_path_factory.mktemp("docs-fixtures")
    words = sorted(set(WORDS) | {w for c in CAPTIONS for w in c.split()})
    model, processor = tiny_model_and_processor(words, seed=0)
    model.save_pretrained(root / DEMO_MODEL)
    processor.save_pretrained(root / DEMO_MODEL)
    (root / "photos").mkdir()
    for i, caption in enumerate(CAPTIONS):
        pattern(i, size=48).save(root / "photos" / f"img{i:02d}.jpg")
        (root / "photos" / f"img{i:02d}.txt").write_text(caption)
    for seed, name in enumerate(("query.jpg", "q.jpg", "d1.jpg", "d2.jpg"), start=50):
        pattern(seed, size=48).save(root / name)
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"query_text": caption, "doc_image": f"photos/img{i:02d}.jpg"}) + "\n"
        for i, caption in enumerate(CAPTIONS)))  # fmt: skip
    return root


class Page:
    """One page's workspace and how far down the page its blocks have run."""

    def __init__(self, folder: Path):
        self.folder, self.done, self.failed = folder, 0, []


PAGES_RUN: dict[Path, Page] = {}


def run_shell(block: Block, folder: Path) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's ret2-* and python
    env.pop("VIRTUAL_ENV", None)
    out = processes.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=folder, env=env, timeout=600)
    return out.returncode, out.stdout, out.stderr


def run_python(block: Block, folder: Path) -> tuple[int, str, str]:
    stdout, stderr, before = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            exec(compile(block.code, str(block.page), "exec"), {"__name__": "__main__"})
        return 0, stdout.getvalue(), stderr.getvalue()
    except Exception as error:  # the test reports it with the block's output
        return 1, stdout.getvalue(), f"{stderr.getvalue()}{type(error).__name__}: {error}"
    finally:
        os.chdir(before)


def run_block(block: Block, folder: Path) -> tuple[int, str, str]:
    return (run_shell if block.language == "shell" else run_python)(block, folder)


@pytest.mark.slow
@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_block_runs_as_written(block, fixtures, tmp_path_factory):
    if block.not_run is not None:
        pytest.skip(f"marked not run: {block.not_run}")
    page = PAGES_RUN.get(block.page)
    if page is None:
        folder = tmp_path_factory.mktemp(block.page.stem)
        shutil.copytree(fixtures, folder, dirs_exist_ok=True)
        page = PAGES_RUN[block.page] = Page(folder)
    earlier = [b for b in ALL_BLOCKS if b.page == block.page and b.not_run is None]
    position = earlier.index(block)
    for previous in earlier[page.done : position]:  # what a reader ran before reaching this block
        if run_block(previous, page.folder)[0] != 0:
            page.failed.append(previous.id)
    start = time.perf_counter()
    code, stdout, stderr = run_block(block, page.folder)
    page.done = max(page.done, position + 1)
    context = f"(earlier blocks of the page that failed: {page.failed})" if page.failed else ""
    assert code == 0, f"{block.id} exited {code} {context}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
    for (name, piece), expected in EXPECTED_OUTPUT.items():
        if block.page.name == name and piece in block.code:
            assert expected in stdout, f"{block.id} did not print {expected!r}:\n{stdout[-3000:]}"
    if block.page.name == "README.md" and "Ret2Index.build" in block.code:  # the ten-line example: five hits
        assert len(re.findall(r"(?m)^-?\d\.\d{3} img0\d\.jpg ", stdout)) == 5, stdout
    if block.page.name == "README.md" and "--filter" in block.code:  # a filtered search, then a hybrid one
        ids = r"(?m)^ +\d+ +-?\d+\.\d{4}  (\S+)"  # rank, score, id of each printed hit
        filtered, hybrid = [re.findall(ids, part) for part in stdout.split("query: ")[1:]]
        assert filtered == ["beach"] and hybrid[0] == "sofa", stdout
    print(f"{block.id} ran in {time.perf_counter() - start:.1f} s")


def test_every_relative_link_points_to_an_existing_file_and_heading():
    """Markdown links and images in the README and docs/: the file exists, and a `#fragment` names a heading there."""
    broken = []
    for page in PAGES:
        text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # links inside code blocks are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    headings = re.findall(r"(?m)^#+ (.+)$", text)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_landing_page():
    """At most 12,000 characters; installs from a checkout (the package is not on PyPI) before its example; each job's
    section links to its guide in docs/."""
    readme = (REPO / "README.md").read_text()
    assert len(readme) <= README_LIMIT, len(readme)
    install = readme.index("pip install torch==2.13.0 -e .")
    assert readme.index("source .venv/bin/activate") < install < readme.index("## In ten lines")
    assert 'pip install -e ".[milvus,sentence-transformers]"' in readme
    assert not re.search(r"pip install (ret2|\"ret2)", readme)
    for guide in ("using", "fine-tuning", "evaluation", "your-collection", "publishing", "ret1", "demo_results",
                  "ablation", "benchmarks", "testing", "layout"):  # fmt: skip
        assert f"(docs/{guide}.md)" in readme, guide
    assert not re.search(r"(?m)^\|.*\d+\.\d ± \d", readme)  # results tables live in docs/demo_results.md
