"""Synthetic benchmark data in the exact M-BEIR layout (plus a ReT-M2KR copy), for tests and benchmarks.

Every image is one procedurally drawn shape (a *scene*: shape, colour, position, size, background) and
every text describes its scene ("a large red circle in the top left on a white background"), so each
of the 16 rows is learnable: captions <-> images (tasks 0, 3), questions -> passages naming the
scene's entity (1, 6), image+text pairs (2, 8), jittered re-renders of the same scene (4, NIGHTS), and
composed queries, a reference image plus "make the circle blue", whose target is that edit (7).

Scenes are split at random (by seed) into two disjoint halves: test rows use one, the training split
(`query/union_train/mbeir_union_up_train.jsonl` + `cand_pool/global/mbeir_union_train_cand_pool.jsonl`,
with `neg_cand_list` hard negatives: candidates one attribute away) uses the other; ids continue
per dataset, so qids and dids are disjoint too. As in M-BEIR, OVEN / InfoSeek queries of tasks 6 and 8
also list the other dataset's did for the same entity among their positives.

Usage::

    ret2-synthetic --output-dir DIR --seed 0             (from a checkout: python -m ret2.commands.synthetic ...)
    ret2-synthetic --output-dir DIR --row-pool-size mbeir_webqa_task1_test=100000   # benchmark pool

The same seed gives byte-identical files. Large pools reuse the per-scene image files (at most one PNG
per scene and dataset), so they stay small on disk. Each root (and its `m2kr/`) holds `GENERATED_MARKER`: the
evaluations record that their scores were measured on generated data, and a published model card names no benchmark
for them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

from PIL import Image, ImageDraw
from tqdm import tqdm

from .m2kr import m2kr_dataset
from .mbeir import (
    DEFAULT_INSTRUCTIONS, EVAL_ROWS, INSTRUCTION_COLUMNS, INSTRUCTIONS, TRAIN_POOL, TRAIN_QUERIES, EvalRow,
    build_global_pool,
)

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS = {"red": (220, 38, 38), "green": (22, 163, 74), "blue": (37, 99, 235), "yellow": (234, 179, 8),
          "purple": (147, 51, 234), "orange": (249, 115, 22), "pink": (236, 72, 153), "black": (20, 20, 20)}
POSITIONS = {"top left": (0.28, 0.28), "top right": (0.72, 0.28), "center": (0.5, 0.5),
             "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72)}
SIZES = {"small": 0.14, "large": 0.24}  # radius as a fraction of the image side
BACKGROUNDS = {"white": (255, 255, 255), "grey": (200, 200, 200), "beige": (238, 226, 200), "mint": (205, 240, 220)}


class Scene(NamedTuple):
    shape: str
    color: str
    position: str
    size: str
    background: str


SCENES: tuple[Scene, ...] = tuple(Scene(*a) for a in itertools.product(SHAPES, COLORS, POSITIONS, SIZES, BACKGROUNDS))
_SCENE_ID = {scene: i for i, scene in enumerate(SCENES)}
_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "zo", "an", "vi", "po", "se", "du", "ne", "ba", "fi")


GENERATED_MARKER = "ret2_generated.json"  # in every root this module writes: {"generator": ..., "seed": ...}


def is_generated(root: str | Path) -> bool:
    """Whether `root` was written by this generator (holds `GENERATED_MARKER`), not a copy of the real benchmark."""
    return (Path(root) / GENERATED_MARKER).is_file()


def _write_marker(root: Path, seed: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / GENERATED_MARKER).write_text(json.dumps({"generator": "ret2.data.synthetic", "seed": seed}) + "\n")


def entity_name(scene_id: int) -> str:
    """A made-up, unique "Wikipedia entity" name for a scene, e.g. "Kalomi"."""
    n = len(_SYLLABLES)
    return (_SYLLABLES[scene_id // n**2 % n] + _SYLLABLES[scene_id // n % n] + _SYLLABLES[scene_id % n]).capitalize()


def caption(scene: Scene) -> str:
    return f"a {scene.size} {scene.color} {scene.shape} in the {scene.position} on a {scene.background} background"


def draw_scene(scene: Scene, side: int = 64, jitter: tuple[int, int] = (0, 0)) -> Image.Image:
    """Render a scene as a `side` x `side` RGB image; `jitter` shifts the shape by a few pixels."""
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    x, y, r = fx * side + jitter[0], fy * side + jitter[1], SIZES[scene.size] * side
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif scene.shape == "square":
        draw.rectangle([x - 0.8 * r, y - 0.8 * r, x + 0.8 * r, y + 0.8 * r], fill=fill)
    elif scene.shape == "cross":
        w = 0.35 * r
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    else:  # regular polygons: (number of corners, radius of every other corner)
        corners, inner = {"triangle": (3, 1.0), "diamond": (4, 1.0), "star": (10, 0.45)}[scene.shape]
        points = []
        for i in range(corners):
            rad = r * (inner if i % 2 else 1.0)
            angle = -math.pi / 2 + 2 * math.pi * i / corners  # first corner points up
            points.append((x + rad * math.cos(angle), y + rad * math.sin(angle)))
        draw.polygon(points, fill=fill)
    return image


# ----------------------------------------------------------------------------- texts

def _fields(scene_id: int) -> dict[str, str]:
    scene = SCENES[scene_id]
    return {**scene._asdict(), "name": entity_name(scene_id), "caption": caption(scene)}


_FASHION = "{color} {shape} print, {size}, placed {position}, on {background} fabric"
# Query texts of the rows whose queries carry text (task 7 queries carry their edit instead).
_QUERY_TEXT = {
    ("VisualNews", 0): "News photo: {caption}",
    ("MSCOCO", 0): "{caption}",
    ("Fashion200K", 0): _FASHION,
    ("WebQA", 1): "What is the name of the {size} {color} {shape} in the {position} on the {background} background?",
    ("EDIS", 2): "Breaking: {caption}",
    ("WebQA", 2): "Which picture shows the {size} {color} {shape} in the {position} on a {background} background?",
    ("OVEN", 6): "What is the name of this {shape}?",
    ("InfoSeek", 6): "What is this {shape} called?",
    ("OVEN", 8): "What is the name of this {shape}?",
    ("InfoSeek", 8): "What is this {shape} called?",
}
# Candidate texts of the rows whose candidates carry text.
_CAND_TEXT = {
    ("WebQA", 1): "{name} is the {size} {color} {shape} found in the {position} of a {background} background.",
    ("EDIS", 2): "Headline: {caption}",
    ("WebQA", 2): "{name}: {caption}.",
    ("VisualNews", 3): "News photo: {caption}",
    ("MSCOCO", 3): "{caption}",
    ("Fashion200K", 3): _FASHION,
    ("OVEN", 6): "{name} is a {size} {color} {shape} located in the {position} of a {background} canvas.",
    ("InfoSeek", 6): "{name} ({color} {shape}) is a {size} figure drawn in the {position} on {background}.",
    ("OVEN", 8): "{name}: {caption}.",
    ("InfoSeek", 8): "{name}, the {size} {color} {shape} in the {position} on {background}.",
}
# Modification texts of composed queries (task 7): the target is the reference with `attr` set to `new`.
_EDITABLE = {"shape": SHAPES, "color": tuple(COLORS), "position": tuple(POSITIONS), "size": tuple(SIZES),
             "background": tuple(BACKGROUNDS)}
_EDIT_TEXT = {
    "FashionIQ": {"shape": "has a {new} print instead of a {old}", "color": "is {new} instead of {old}",
                  "position": "has the print moved to the {new}", "size": "is {new} rather than {old}",
                  "background": "is {new} fabric instead of {old}"},
    "CIRR": {"shape": "change the {old} into a {new}", "color": "make the {shape} {new}",
             "position": "move the {shape} to the {new}", "size": "make the {shape} {new}",
             "background": "put it on a {new} background"},
}


def _edits(scene_id: int, in_split: set[int]) -> list[tuple[str, str, int]]:
    """(attribute, new value, edited scene id) for every one-attribute edit that stays in the split."""
    scene = SCENES[scene_id]
    edits = []
    for attr, values in _EDITABLE.items():
        for new in values:
            target = _SCENE_ID[scene._replace(**{attr: new})]
            if new != getattr(scene, attr) and target in in_split:
                edits.append((attr, new, target))
    return edits


# ----------------------------------------------------------------------------- planning a split

_Item = tuple[int, int, int]  # (scene id, variant: 1 = jittered re-render, copy: > 0 for repeats in big pools)


class _Query(NamedTuple):
    scene: int  # scene of the query image / text (the reference image for task 7)
    positive: _Item
    edit: str | None  # modification text of a composed query


def _plan_queries(row: EvalRow, scenes: list[int], in_split: set[int], n: int, rng: random.Random) -> list[_Query]:
    queries = []
    for s in rng.sample(scenes, len(scenes)):
        if len(queries) == n:
            break
        if row.task_id == 4:  # NIGHTS: the same scene, drawn a few pixels off
            queries.append(_Query(s, (s, 1, 0), None))
        elif row.task_id == 7:
            edits = _edits(s, in_split)
            if edits:
                attr, new, target = rng.choice(edits)
                old = getattr(SCENES[s], attr)
                text = _EDIT_TEXT[row.dataset][attr].format(old=old, new=new, shape=SCENES[s].shape)
                queries.append(_Query(s, (target, 0, 0), text))
        else:
            queries.append(_Query(s, (s, 0, 0), None))
    return queries


def _plan_pool(
    required: Iterable[_Item], avoid: set[int], scenes: list[int], size: int, rng: random.Random
) -> list[_Item]:
    """`required` items plus distractors from scenes not in `avoid` up to `size` items, shuffled.
    Beyond the distinct scenes, distractors repeat as numbered copies (big benchmark pools)."""
    items = list(dict.fromkeys(required))
    free = [s for s in scenes if s not in avoid]
    need = max(0, size - len(items))
    items += [(s, 0, 0) for s in rng.sample(free, min(need, len(free)))]
    items += [(rng.choice(free), 0, copy) for copy in range(1, need - len(free) + 1)]
    rng.shuffle(items)
    return items


class _Ids:
    """Per-dataset counters giving "<dataset_id>:<n>"; shared by both splits so their ids are disjoint."""

    def __init__(self):
        self.next: dict[int, int] = {}

    def __call__(self, dataset_id: int) -> str:
        n = self.next.get(dataset_id, 1)
        self.next[dataset_id] = n + 1
        return f"{dataset_id}:{n}"


class _Images:
    """Writes each (folder, scene, variant) PNG once, under `root`; returns its relative path."""

    def __init__(self, root: Path, side: int):
        self.root, self.side, self.written = root, side, set()

    def __call__(self, folder: str, scene_id: int, variant: int = 0) -> str:
        rel = f"{folder}/{scene_id:04d}{'_v1' if variant else ''}.png"
        if rel not in self.written:
            self.written.add(rel)
            jitter = (2 + scene_id % 2, -2 - scene_id // 2 % 2) if variant else (0, 0)
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            draw_scene(SCENES[scene_id], self.side, jitter).save(self.root / rel)
        return rel


def _sibling(row: EvalRow) -> EvalRow | None:
    """OVEN <-> InfoSeek row of the same task: their positives include each other's dids."""
    other = {"OVEN": "InfoSeek", "InfoSeek": "OVEN"}.get(row.dataset)
    return next((r for r in EVAL_ROWS if r.dataset == other and r.task_id == row.task_id), None)


def _build_split(
    scenes: list[int], in_split: set[int], n_queries: int, pool_sizes: Mapping[str, int], hard_negatives: bool,
    rng: random.Random, qids: _Ids, dids: _Ids, images: _Images,
) -> list[tuple[EvalRow, list[dict], list[dict]]]:
    """(row, query records, candidate records) of every row of one split."""
    plans = {row: _plan_queries(row, scenes, in_split, n_queries, rng) for row in EVAL_ROWS}
    negatives: dict[EvalRow, list[_Item | None]] = {}
    pools: dict[EvalRow, dict[_Item, str]] = {}  # item -> did, in pool order
    for row in EVAL_ROWS:
        queries, sibling = plans[row], _sibling(row)
        required = [q.positive for q in queries]
        required += [(q.scene, 0, 0) for q in queries] if row.task_id == 7 else []  # references: hard distractors
        required += [q.positive for q in plans[sibling]] if sibling else []
        avoid = {q.scene for q in queries} | {item[0] for item in required}
        negatives[row] = [None] * len(queries)
        if hard_negatives:  # a scene one attribute away from the positive, not a plain copy of a query image
            for i, q in enumerate(queries):
                near = [t for _, _, t in _edits(q.positive[0], in_split) if t not in avoid or (t, 0, 0) in required]
                negatives[row][i] = (rng.choice(near), 0, 0) if near else None
            required += [n for n in negatives[row] if n is not None]
            avoid |= {n[0] for n in negatives[row] if n is not None}
        items = _plan_pool(required, avoid, scenes, pool_sizes[row.query_stem], rng)
        pools[row] = {item: dids(row.dataset_id) for item in items}

    out = []
    for row in EVAL_ROWS:
        key, sibling, pool = (row.dataset, row.task_id), _sibling(row), pools[row]
        folder = f"mbeir_images/{row.dataset.lower()}_images"
        candidates = []
        for (s, variant, copy), did in pool.items():
            txt = img = None
            if "text" in row.cand_modality:
                txt = _CAND_TEXT[key].format(**_fields(s)) + (f" (entry {copy})" if copy else "")
            if "image" in row.cand_modality:
                img = images(folder, s, variant)
            candidates.append(
                {"txt": txt, "img_path": img, "modality": row.cand_modality, "did": did, "src_content": None}
            )
        queries = []
        for q, negative in zip(plans[row], negatives[row]):
            txt = img = None
            if "text" in row.query_modality:
                txt = q.edit if row.task_id == 7 else _QUERY_TEXT[key].format(**_fields(q.scene))
            if "image" in row.query_modality:
                img = images(folder, q.scene)
            queries.append({
                "qid": qids(row.dataset_id), "query_txt": txt, "query_img_path": img,
                "query_modality": row.query_modality, "query_src_content": None,
                "pos_cand_list": [pool[q.positive]] + ([pools[sibling][q.positive]] if sibling else []),
                "neg_cand_list": [pool[negative]] if negative else [], "task_id": row.task_id,
            })
        out.append((row, queries, candidates))
    return out


# ----------------------------------------------------------------------------- writing

def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    _write_lines(path, (json.dumps(r) for r in records))


def _write_instructions(path: Path) -> None:
    """The real TSV header; prompt_1 from the doc's table, two paraphrases, prompt_4 left empty."""
    lines = ["\t".join(INSTRUCTION_COLUMNS)]
    for row in EVAL_ROWS:
        prompt = DEFAULT_INSTRUCTIONS[(row.dataset_id, row.query_modality, row.cand_modality)][0]
        paraphrases = [f"Given the query, {prompt[0].lower()}{prompt[1:]}", f"{prompt[:-1]}, please."]
        lines.append("\t".join([row.query_modality, row.cand_modality, row.dataset, str(row.dataset_id),
                                prompt, *paraphrases, ""]))
    _write_lines(path, lines)


_M2KR_INSTRUCTION = "Using the provided image, obtain documents that address the subsequent question:"


def _write_m2kr(root: Path, scenes: list[int], n_queries: int, pool_size: int, rng: random.Random, side: int) -> None:
    """ReT-M2KR jsonl for OVEN-, InfoSeek- and E-VQA-like sub-datasets, images under `root/images`.
    Exercises every variant of the format: scalar and list (str and int) passage ids, null
    questions, string and {"wikidata": ...} answers, passages with and without images."""
    images = _Images(root, side)
    for name in ("OVEN", "InfoSeek", "E-VQA"):
        dataset = m2kr_dataset(name)
        pool = rng.sample(scenes, min(pool_size, len(scenes)))
        pids = {s: (k if name == "E-VQA" else f"{dataset.stem}_{k}") for k, s in enumerate(pool)}
        passages = []
        for s in pool:
            f = _fields(s)
            text = {"OVEN": _CAND_TEXT[("OVEN", 6)], "InfoSeek": _CAND_TEXT[("InfoSeek", 6)] + " Registry number {id}.",
                    "E-VQA": "{name}: {caption}."}[name].format(id=s, **f)
            img = images(f"images/{dataset.stem}", s) if name == "OVEN" else None
            passages.append({"passage_id": pids[s], "passage_text": text, "passage_image_path": img})
        queries = []
        for i, s in enumerate(rng.sample(pool, min(n_queries, len(pool)))):
            shape, entity = SCENES[s].shape, entity_name(s)
            question = None if name == "OVEN" and i % 5 == 0 else f"What is this {shape} called?"
            queries.append({
                "data_id": f"{dataset.stem}_{i}", "instruction": _M2KR_INSTRUCTION, "question": question,
                "image_path": images(f"images/{dataset.stem}", s),
                "passage_id": pids[s] if name == "OVEN" else [pids[s]],
                "answer": {"OVEN": None, "InfoSeek": [entity, {"wikidata": s}], "E-VQA": [entity]}[name],
            })
        queries_path, passages_path = dataset.ret_paths(root)
        _write_jsonl(queries_path, queries)
        _write_jsonl(passages_path, passages)


def generate_mbeir(
    output: str | Path,
    seed: int = 0,
    n_per_task: int = 24,
    pool_size: int = 80,
    n_train_per_task: int = 48,
    row_pool_sizes: Mapping[str, int] | None = None,
    image_size: int = 64,
    m2kr: bool = True,
    progress: bool | None = None,
) -> Path:
    """Write a synthetic M-BEIR dataset under `output` and return its path.

    Args:
        output: dataset root to create (existing files are overwritten).
        seed: the same seed gives byte-identical files.
        n_per_task: test queries per row (each of the 16 rows).
        pool_size: candidates per local test pool and per row of the training pool (at least the
            positives, and references / hard negatives where the row has them).
        n_train_per_task: training queries per row.
        row_pool_sizes: {query stem: pool size} overrides for test rows, e.g.
            `{"mbeir_webqa_task1_test": 100_000}` for a benchmark pool.
        image_size: side of the square PNGs.
        m2kr: also write ReT-M2KR jsonl under `output/m2kr/` (image root `output/m2kr`).
        progress: show a progress bar (None: only for pools of 10,000 candidates or more).
    """
    for name, value in (("n_per_task", n_per_task), ("pool_size", pool_size),
                        ("n_train_per_task", n_train_per_task), ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    stems = [row.query_stem for row in EVAL_ROWS]
    row_pool_sizes = dict(row_pool_sizes or {})
    unknown = [s for s in row_pool_sizes if s not in stems]
    if unknown:
        raise ValueError(f"row_pool_sizes has unknown rows {unknown}; valid rows: {stems}")
    bad = {s: n for s, n in row_pool_sizes.items() if not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"row_pool_sizes must be positive integers, got {bad}")
    root = Path(output)
    rng = random.Random(seed)
    order = rng.sample(range(len(SCENES)), len(SCENES))
    splits = {"test": sorted(order[::2]), "train": sorted(order[1::2])}  # disjoint halves of the scenes
    if max(n_per_task, n_train_per_task) > len(splits["test"]):
        raise ValueError(f"at most {len(splits['test'])} queries per row (distinct scenes), "
                         f"got n_per_task={n_per_task}, n_train_per_task={n_train_per_task}")
    test_sizes = {s: row_pool_sizes.get(s, pool_size) for s in stems}
    qids, dids, images = _Ids(), _Ids(), _Images(root, image_size)

    total = sum(test_sizes.values()) + pool_size * len(stems)
    show = progress if progress is not None else total >= 10_000
    with tqdm(total=total, desc="synthetic M-BEIR", unit="cand", disable=not show) as bar:
        test = _build_split(splits["test"], set(splits["test"]), n_per_task, test_sizes, False, rng, qids, dids, images)
        for row, queries, candidates in test:
            _write_jsonl(row.query_path(root), queries)
            _write_jsonl(row.pool_path(root), candidates)
            _write_lines(row.qrels_path(root), (f"{q['qid']} 0 {did} 1 {row.task_id}"
                                                for q in queries for did in q["pos_cand_list"]))
            bar.update(len(candidates))
        build_global_pool(root)
        train = _build_split(splits["train"], set(splits["train"]), n_train_per_task, dict.fromkeys(stems, pool_size),
                             True, rng, qids, dids, images)
        _write_jsonl(root / TRAIN_QUERIES, (q for _, queries, _ in train for q in queries))
        _write_jsonl(root / TRAIN_POOL, (c for _, _, candidates in train for c in candidates))
        bar.update(pool_size * len(stems))
    _write_instructions(root / INSTRUCTIONS)
    _write_marker(root, seed)
    if m2kr:
        _write_m2kr(root / "m2kr", splits["test"], n_per_task, pool_size, rng, image_size)
        _write_marker(root / "m2kr", seed)
    return root
