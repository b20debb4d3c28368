"""Kills an index write at every point where it commits a file, and checks what each kill leaves.

    python kill_worker.py MODEL WORK OP    (OP: build, add, delete, upsert, compact)

Every file of an index is committed by a rename (`os.replace`, also under `Path.replace` and `write_atomic`). For
n = 1, 2, ... a forked process runs OP on a fresh copy of the index as it was before, and SIGKILLs itself just before
its n-th rename; the parent then opens the copy and compares it with the index before and after OP (the live ids,
their texts and metadata, a vector, a keyword and an approximate search), then runs OP again on it, which must recover
by itself and give the index after OP. The loop ends at the first n the op survives. Prints one JSON line:
{"op", "kills", "states": ["before" | "after", ...]} or, on a mismatch, {"error": ...} (exit 1).
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

from ret2.index import Ret2Index

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conftest import WORDS, pattern  # noqa: E402

MODEL, WORK, OP = sys.argv[1], Path(sys.argv[2]), sys.argv[3]


def records(n, start=0):
    out = []
    for i in range(start, start + n):
        pattern(100 + i).save(WORK / f"d{i}.png")
        out.append({"id": f"d{i}", "text": f"{WORDS[i % 14]} {WORDS[(3 * i) % 14]}",
                    "image": f"d{i}.png" if i % 2 else None, "rank": i})  # fmt: skip
    return out


def build(folder):
    return Ret2Index.build(folder, records(40), model=MODEL, image_root=WORK, precision="int8")


def setup(folder):
    """The index before the op: int8 codes, IVF-PQ and the keyword index, each a file the op must keep in step."""
    index = build(folder)
    index.build_approximate("ivfpq", recall_sample=5)
    index.search("red circle", k=3, mode="keyword")  # builds the keyword index
    if OP == "compact":
        index.delete(["d4", "d5", "d6", "d7", "d8"])  # 5 of 40: below the automatic fraction


def run_op(folder):
    if OP == "build":
        return build(folder)
    index = Ret2Index.open(folder)
    if OP == "add":
        index.add(records(4, start=40), image_root=WORK)
    elif OP == "delete":
        index.delete(["d1", "d2", "d3"])
    elif OP == "upsert":
        changed = records(1, start=5)[0] | {"text": "zebra crossing"}
        index.upsert([changed, *records(1, start=40)], image_root=WORK)
    elif OP == "compact":
        assert index.compact() == 5
    return index


def state(folder):
    """What a reader sees: None without an index, else the rows, the live documents and the searches' ids."""
    if not (folder / "index.json").exists():
        return None
    index = Ret2Index.open(folder)
    if index.documents == 0:
        return None
    rows = index.storage.rows_of()
    docs = sorted((i, index.record(r[0])["text"], json.dumps(index.record(r[0])["metadata"])) for i, r in rows.items())
    engines = ({}, {"mode": "keyword"}) + (({"engine": "approximate"},) if index.meta["approximate"] else ())
    searches = [[h.id for h in index.search("red circle", k=50, **options)] for options in engines]
    return [len(index), docs, searches]  # the rows too: a compaction changes them, and nothing a search sees


def main():
    before_dir, after_dir = WORK / "before", WORK / "after"
    if OP != "build":
        setup(before_dir)
    else:
        before_dir.mkdir()
    shutil.copytree(before_dir, after_dir)
    run_op(after_dir)
    before, after = state(before_dir), state(after_dir)
    assert before != after, "the op changed nothing"
    states = []
    for n in range(1, 1000):
        trial = WORK / f"trial-{n}"
        shutil.copytree(before_dir, trial)
        pid = os.fork()
        if pid == 0:  # the writer: killed just before its n-th rename
            calls, replace = [0], os.replace

            def dying_replace(src, dst, *args, **kwargs):
                calls[0] += 1
                if calls[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return replace(src, dst, *args, **kwargs)

            os.replace = dying_replace
            run_op(trial)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            print(json.dumps({"op": OP, "kills": n - 1, "states": states}))
            return
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise SystemExit(json.dumps({"error": f"kill {n}: the writer ended with status {status}"}))
        seen = state(trial)
        if seen not in (before, after):
            raise SystemExit(json.dumps({"error": f"kill {n}: the index is neither as before nor as after {OP}",
                                         "seen": seen, "before": before, "after": after}))  # fmt: skip
        states.append("before" if seen == before else "after")
        if seen == before:  # the next writer recovers by itself
            run_op(trial)
            if state(trial) != after:
                raise SystemExit(json.dumps({"error": f"kill {n}: {OP} again did not give the index after {OP}"}))
        shutil.rmtree(trial)
    raise SystemExit(json.dumps({"error": "the op never finished"}))


if __name__ == "__main__":
    main()
