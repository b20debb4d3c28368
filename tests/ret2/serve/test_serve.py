"""ret2-serve, started for real in a child process on a free loopback port: the official `openai` client gets
`model.encode`'s embeddings, `/search` gets `Ret2Index.search`'s hits, 2,000 requests from 32 clients all succeed,
every bad request gets its 4xx and the server stays healthy, image paths never leave the image root, the key is
enforced, SIGTERM answers the requests in flight, and the page works in headless Chromium."""

import asyncio
import base64
import http.client
import json
import os
import struct
import sys
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import processes
from conftest import WORDS, pattern

from ret2.index import Ret2Index
from ret2.serve.process import ServerProcess

pytestmark = pytest.mark.slow

LIMITS = ["--max-items", "8", "--max-text-chars", "500", "--max-image-pixels", "10000", "--max-image-bytes",
          "200000", "--max-body-bytes", "1000000"]  # fmt: skip


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten small images with captions (`name.txt` beside `name.png`)."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(10):
        pattern(i).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"{WORDS[i]} {WORDS[(3 * i + 1) % len(WORDS)]} {WORDS[(5 * i + 2) % len(WORDS)]}")
    return folder


MATRYOSHKA = [32, 16, 8]


@pytest.fixture(scope="module")
def matryoshka_model_dir(tiny, tmp_path_factory) -> Path:
    """The tiny model saved as one trained for the Matryoshka sizes 32 (its full size), 16 and 8."""
    model, processor = tiny
    folder = tmp_path_factory.mktemp("matryoshka") / "ret2-tiny"
    model.config.matryoshka_dims = MATRYOSHKA
    try:
        model.save_pretrained(folder)
    finally:
        model.config.matryoshka_dims = None
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def index(matryoshka_model_dir, photos, tmp_path_factory) -> Ret2Index:
    return Ret2Index.build(tmp_path_factory.mktemp("serve") / "index", photos, model=matryoshka_model_dir)


@pytest.fixture(scope="module")
def server(index, tmp_path_factory):
    env = {"RET2_API_KEY": ""}
    with ServerProcess(["--index", str(index.folder), *LIMITS], tmp_path_factory.mktemp("log") / "serve.log", env) as s:
        yield s


def encode(index: Ret2Index, inputs: list, kind: str = "query", **options) -> np.ndarray:
    return index.model.encode(inputs, kind=kind, processor=index.processor, image_orientation=index.image_orientation,
                              **options)  # fmt: skip


def test_openai_client_gets_model_encode_embeddings(server, index, photos):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)
    texts = ["a red circle on the left", "big blue square"]
    response = client.embeddings.create(model="ret2", input=texts)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in response.data])
    np.testing.assert_allclose(got, encode(index, texts), atol=1e-4)
    assert response.usage.prompt_tokens > 0 and response.model == index.meta["model"]["name_or_path"]

    images = [{"image": b64(photos / "p1.png")}, {"image": "data:image/png;base64," + b64(photos / "p2.png")}]
    response = client.embeddings.create(model="ret2", input=images, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in response.data],
                               encode(index, [photos / "p1.png", photos / "p2.png"]), atol=1e-4)  # fmt: skip

    both = [{"text": "green star", "image": b64(photos / "p3.png")}]
    for kind in ("query", "document"):
        response = client.embeddings.create(model="ret2", input=both, extra_body={"input_type": kind})
        np.testing.assert_allclose([response.data[0].embedding],
                                   encode(index, [("green star", photos / "p3.png")], kind), atol=1e-4)  # fmt: skip


def test_dimensions_gives_the_renormalised_matryoshka_prefixes(server, index, photos):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)
    inputs = ["a red circle on the left", {"text": "green star", "image": b64(photos / "p3.png")}]
    for size in (8, 16, 32):
        response = client.embeddings.create(model="ret2", input=inputs, dimensions=size)
        got = np.array([d.embedding for d in response.data])
        expected = encode(index, ["a red circle on the left", ("green star", photos / "p3.png")], truncate_dim=size)
        assert got.shape == (2, size)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    for size in (12, 64, 0):
        with pytest.raises(BadRequestError, match=rf"dimensions={size} is not a size this model serves: valid sizes "
                                                  r"are \[32, 16, 8\]"):  # fmt: skip
            client.embeddings.create(model="ret2", input="a", dimensions=size)


def test_ready_reports_the_open_index(server, index):
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert len(index) == 10 and ready.json()["index"] == {"folder": str(index.folder), "documents": 10,
                                                          "revision": index.storage.revision, "writes": False}


def test_search_returns_the_hits_of_ret2index_search(server, index, photos):
    queries = [({"text": "red circle"}, "red circle"),
               ({"image": b64(photos / "p4.png")}, photos / "p4.png"),
               ({"text": "blue star", "image": b64(photos / "p5.png")}, {"text": "blue star", "image": photos / "p5.png"})]  # fmt: skip
    for body, query in queries:
        response = httpx.post(server.url + "/search", json={**body, "k": 4})
        assert response.status_code == 200, response.text
        hits, expected = response.json()["hits"], index.search(query, k=4)
        assert [h["id"] for h in hits] == [h.id for h in expected]
        np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-4)
        assert [h["text"] for h in hits] == [h.text for h in expected]
    image = httpx.get(server.url + hits[0]["image_url"])
    assert image.status_code == 200 and image.content == Path(expected[0].image_path).read_bytes()


def test_2000_requests_from_32_clients_all_succeed_in_batches(server):
    """Through the benchmark's driver (asyncio + httpx, one connection per client): every request answered with its
    embedding, and the batcher formed batches of more than one request."""
    from ret2.bench.serve import drive, request_bodies

    result = asyncio.run(drive(server.url, request_bodies(2000, "text"), clients=32))
    assert (len(result["latencies"]), result["failures"]) == (2000, {})
    sizes = {int(size): n for size, n in httpx.get(server.url + "/health").json()["batch_sizes"].items()}
    assert max(sizes) > 1


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels: a decompression bomb's header."""
    data = bytearray(_png_bytes())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _png_bytes(size: int = 8) -> bytes:
    import io

    out = io.BytesIO()
    pattern(0, size).save(out, format="PNG")
    return out.getvalue()


def _embed(text_or_input) -> dict:
    return {"model": "ret2", "input": text_or_input}


BAD_REQUESTS = [
    ("/v1/embeddings", b"{not json", 400, "not valid JSON"),
    ("/v1/embeddings", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/embeddings", {"input": "a", "colour": "red"}, 400, "unknown field(s) ['colour']"),
    ("/v1/embeddings", {"model": "ret2"}, 400, "missing field 'input'"),
    ("/v1/embeddings", _embed([]), 400, "empty input"),
    ("/v1/embeddings", _embed(""), 400, "empty input"),
    ("/v1/embeddings", _embed([{"text": None}]), 400, "empty input"),
    ("/v1/embeddings", _embed([[1, 2, 3]]), 400, "token ids are not accepted"),
    ("/v1/embeddings", _embed([{"text": "a", "caption": "b"}]), 400, "unknown field(s) ['caption']"),
    ("/v1/embeddings", {**_embed("a"), "encoding_format": "int8"}, 400, "['float', 'base64']"),
    ("/v1/embeddings", {**_embed("a"), "input_type": "passage"}, 400, "['query', 'document']"),
    ("/v1/embeddings", _embed([{"image": "data:image/png;base64,@@@@"}]), 400, "data URL"),
    ("/v1/embeddings", _embed([{"image": base64.b64encode(b"not an image").decode()}]), 400, "not an image"),
    ("/v1/embeddings", _embed([{"image": "https://example.com/a.png"}]), 400, "URLs are not fetched"),
    ("/v1/embeddings", _embed([{"image": "/etc/passwd"}]), 400, "file paths are refused"),
    ("/v1/embeddings", _embed(["a"] * 9), 422, "max_items=8"),
    ("/v1/embeddings", _embed("a" * 501), 422, "max_text_chars=500"),
    ("/v1/embeddings", _embed([{"image": base64.b64encode(_png_bytes(101)).decode()}]), 413, "max_image_pixels=10000"),
    ("/v1/embeddings", _embed([{"image": base64.b64encode(_png_claiming(3000, 3000)).decode()}]), 413,
     "3000x3000 pixels is over the limit max_image_pixels=10000"),  # a bomb's header: refused before decoding
    ("/v1/embeddings", _embed([{"image": base64.b64encode(_png_claiming(60000, 60000)).decode()}]), 413,
     "max_image_pixels=10000 (Image size (3600000000 pixels)"),  # past PIL's own bomb check
    ("/v1/embeddings", _embed([{"image": "A" * 300_000}]), 413, "max_image_bytes=200000"),
    ("/v1/embeddings", _embed("a " * 600_000), 413, "max_body_bytes=1000000"),
    ("/search", {"text": "a", "k": 0}, 400, "positive integer"),
    ("/search", {"text": "a", "k": 5000}, 422, "max_k=1000"),
    ("/search", {"text": "a", "engine": "bogus"}, 400, "['exact', 'approximate', 'milvus']"),
    ("/search", {"text": "a", "engine": "approximate"}, 400, "no approximate index"),
    ("/search", {"k": 3}, 400, "empty input"),
    ("/v1/nowhere", {}, 404, "Not Found"),
]  # fmt: skip


def test_every_bad_request_gets_its_4xx_and_the_server_stays_healthy(server, index):
    expected = encode(index, ["a red circle"])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path, body, status, phrase in BAD_REQUESTS:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = http.post(path, content=content, headers={"Content-Type": "application/json"})
            assert (response.status_code, phrase in response.json()["error"]["message"]) == (status, True), (
                path, body if isinstance(body, bytes) else str(body)[:80], response.text[:300])  # fmt: skip
            good = http.post("/v1/embeddings", json=_embed("a red circle"))
            np.testing.assert_allclose(good.json()["data"][0]["embedding"], expected[0], atol=1e-4)
        # a body sent in chunks, without Content-Length: refused while it arrives
        response = http.post("/v1/embeddings", content=iter([b"x" * 600_000, b"x" * 600_000]))
        assert response.status_code == 413 and "max_body_bytes=1000000" in response.json()["error"]["message"]
        assert http.get("/health").json()["status"] == "ok"
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("path", ["/images/0/../../etc/passwd", "/images/0/%2e%2e/%2e%2e/etc/passwd",
                                  "/images/0//etc/passwd", "/images/0/%2Fetc%2Fpasswd", "/images/0/..%2F..%2Fetc%2Fpasswd",
                                  "/images/0/p9.txt.missing", "/images/1/p9.png", "/images/../p9.png", "/images/p9.png",
                                  "/thumbnails/0/../../etc/passwd", "/thumbnails/0/..%2F..%2Fetc%2Fpasswd",
                                  "/thumbnails/0/p9.txt", "/thumbnails/x/p9.png"])
def test_images_outside_the_image_root_are_refused(server, path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", path)  # sent as written: http.client does not normalise `..`
    response = connection.getresponse()
    body = response.read()
    assert response.status == 404 and b"root:" not in body


def test_an_image_in_the_root_is_served(server, photos):
    response = httpx.get(server.url + "/images/0/p9.png")
    assert response.status_code == 200 and response.content == (photos / "p9.png").read_bytes()


LONG_ID = "adocumentidfartoolongforonecard" * 5  # no hyphen, no space: nowhere a browser would break it by itself


@pytest.fixture(scope="module")
def mixed_server(matryoshka_model_dir, photos, tmp_path_factory):
    """An index of two photos plus documents added from another folder: a TIFF, a 1200x800 JPEG, one with a long id."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mixed")
    built = root / "built"
    built.mkdir()
    for name in ("p0", "p1"):
        (built / f"{name}.png").write_bytes((photos / f"{name}.png").read_bytes())
        (built / f"{name}.txt").write_text((photos / f"{name}.txt").read_text())
    index = Ret2Index.build(root / "index", built, model=matryoshka_model_dir)
    other = root / "elsewhere"
    other.mkdir()
    pattern(7).save(other / "scan.tif", format="TIFF")
    pattern(8, 64).resize((1200, 800)).save(other / "large.jpg", format="JPEG")
    pattern(9).save(other / "long.png")
    index.add([{"id": "scan", "text": "a scanned star", "image": str(other / "scan.tif")},
               {"id": "large", "text": "a large photo", "image": str(other / "large.jpg")},
               {"id": LONG_ID, "text": "long id", "image": str(other / "long.png")}], image_root=other)  # fmt: skip
    with ServerProcess(["--index", str(index.folder)], root / "serve.log", {"RET2_API_KEY": ""}) as s:
        yield s, other


def test_thumbnails_for_every_indexed_image_wherever_it_lives(mixed_server):
    from PIL import Image
    import io

    server, other = mixed_server
    hits = httpx.post(server.url + "/search", json={"text": "star", "k": 10}).json()["hits"]
    assert sorted(h["id"] for h in hits) == sorted(["p0.png", "p1.png", "scan", "large", LONG_ID])
    for hit in hits:
        thumb = httpx.get(server.url + hit["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg", (hit, thumb.text)
        image = Image.open(io.BytesIO(thumb.content))
        assert image.format == "JPEG" and max(image.size) <= 320
    by_id = {h["id"]: h for h in hits}
    assert by_id["large"]["image_url"].startswith("/images/1/")  # the added folder is image root 1
    assert Image.open(io.BytesIO(httpx.get(server.url + by_id["large"]["thumbnail_url"]).content)).size == (320, 213)
    original = httpx.get(server.url + by_id["scan"]["image_url"])
    assert original.status_code == 200 and original.content == (other / "scan.tif").read_bytes()


@pytest.mark.processes
def test_a_port_taken_before_the_server_binds_it_is_replaced(tiny_model_dir, tmp_path):
    """Two servers started at once can be given the same free port; the one that loses the bind restarts on another
    port instead of failing, and stopping it leaves nothing of its session running."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ServerProcess(["--model", str(tiny_model_dir)], tmp_path / "serve.log", {"RET2_API_KEY": ""})
        server.port = taken.getsockname()[1]
        with server:
            assert server.port != taken.getsockname()[1]
            assert httpx.get(server.url + "/health").status_code == 200
        with pytest.raises(ProcessLookupError):
            os.killpg(server.process.pid, 0)


def test_a_non_loopback_bind_without_a_key_refuses_to_start(tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k != "RET2_API_KEY"}
    out = processes.run([sys.executable, "-m", "ret2.serve", "--model", tiny_model_dir, "--host", "0.0.0.0"], env=env,
                        timeout=60)  # fmt: skip
    assert out.returncode == 1 and "needs an API key" in out.stderr


@pytest.mark.processes
def test_the_key_is_required_and_sigterm_answers_the_requests_in_flight(tiny_model_dir, index, tmp_path):
    from openai import AuthenticationError, OpenAI

    args = ["--model", str(tiny_model_dir), "--api-key", "s3cret", "--max-wait-ms", "1000"]
    server = ServerProcess(args, tmp_path / "serve.log", {"RET2_API_KEY": ""})
    with server:
        assert httpx.get(server.url + "/health").status_code == 200  # open: a probe needs no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.post(server.url + "/v1/embeddings", json=_embed("a"), headers=headers)
            assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="m", input="a")
        client = OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(client.embeddings.create(model="m", input="a").data[0].embedding) == index.model.config.embedding_dim

        results = {}

        def request(text):  # waits up to 1 s in the batcher: still in flight when SIGTERM arrives
            results[text] = client.embeddings.create(model="m", input=text).data[0].embedding

        threads = [threading.Thread(target=request, args=(w,)) for w in WORDS[:4]]
        for t in threads:
            t.start()
        threading.Event().wait(0.3)
        status = server.stop()
        for t in threads:
            t.join()
    np.testing.assert_allclose([results[w] for w in WORDS[:4]], encode(index, WORDS[:4]), atol=1e-4)
    assert status in (0, -15) and "s3cret" not in server.output()


needs_chromium = pytest.mark.skipif(
    not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")  # fmt: skip


def headless_chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}/chrome",
                 "--window-size=1100,760"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


# The ids on the grid, read in one script: the page re-renders the grid when a search answers, so reading element by
# element can meet an element that was replaced in between (a stale element reference).
GRID_IDS = "return [...document.querySelectorAll('#grid .hit')].map(e => e.dataset.id)"
ALL_THUMBNAILS_SHOWN = "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"


@needs_chromium
def test_the_search_page_in_headless_chromium(server, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium(tmp_path)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(server.url + "/")

        def grid_ids():
            return driver.execute_script(GRID_IDS)

        def search_ids(body):
            return [h["id"] for h in httpx.post(server.url + "/search", json={**body, "k": 12}).json()["hits"]]

        # choosing an image searches with it at once; a text typed then searches with both on "search"
        driver.find_element(By.ID, "file").send_keys(str(photos / "p6.png"))
        wait.until(lambda d: d.find_element(By.ID, "query-image").is_displayed())
        image_only = search_ids({"image": b64(photos / "p6.png")})
        wait.until(lambda d: grid_ids() == image_only)
        driver.find_element(By.ID, "text").send_keys("red circle")
        driver.find_element(By.ID, "go").click()
        expected = search_ids({"text": "red circle", "image": b64(photos / "p6.png")})
        wait.until(lambda d: grid_ids() == expected)
        captions = driver.execute_script("return [...document.querySelectorAll('#grid .caption')].map(e => e.innerText)")
        assert captions == [(photos / f"{i.removesuffix('.png')}.txt").read_text() for i in expected]
        wait.until(lambda d: d.execute_script(ALL_THUMBNAILS_SHOWN))
        if os.environ.get("RET2_SERVE_SCREENSHOT"):
            driver.save_screenshot(os.environ["RET2_SERVE_SCREENSHOT"])

        clicked = expected[2]  # a result's text and image become the next query
        driver.find_elements(By.CSS_SELECTOR, "#grid .hit")[2].click()
        text = (photos / f"{clicked.removesuffix('.png')}.txt").read_text()
        expected = search_ids({"text": text, "image": b64(photos / clicked)})
        wait.until(lambda d: grid_ids() == expected)
        assert driver.find_element(By.ID, "text").get_attribute("value") == text
    finally:
        driver.quit()


@needs_chromium
def test_the_page_shows_every_thumbnail_fits_long_ids_and_searches_on_choosing_an_image(mixed_server, photos, tmp_path):
    """Documents added from another folder, a TIFF and a 1200x800 JPEG all show thumbnails; a long id stays inside its
    card; choosing an image searches at once (no click on "search")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = mixed_server
    driver = headless_chromium(tmp_path)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(server.url + "/")
        driver.find_element(By.ID, "file").send_keys(str(photos / "p6.png"))
        expected = [h["id"] for h in httpx.post(server.url + "/search", json={"image": b64(photos / "p6.png"),
                                                                             "k": 12}).json()["hits"]]  # fmt: skip
        wait.until(lambda d: d.execute_script(GRID_IDS) == expected)
        assert len(expected) == 5
        wait.until(lambda d: d.execute_script(ALL_THUMBNAILS_SHOWN))
        sources = driver.execute_script("return [...document.querySelectorAll('#grid img')].map(i => i.naturalWidth)")
        assert all(0 < width <= 320 for width in sources)
        overflowing = driver.execute_script(
            "return [...document.querySelectorAll('#grid .hit')].filter(c => c.scrollWidth > c.clientWidth)"
            ".map(c => c.dataset.id)")
        assert overflowing == []
        if os.environ.get("RET2_SERVE_SCREENSHOT_MIXED"):
            driver.save_screenshot(os.environ["RET2_SERVE_SCREENSHOT_MIXED"])
    finally:
        driver.quit()


def test_the_benchmark_drives_a_running_server(server, capsys):
    """`python -m ret2.bench.serve --url`: both rows answered in full, batch sizes read from /health."""
    from ret2.bench.serve import main

    assert main(["--url", server.url, "--requests", "40", "--clients", "8", "--modality", "text+image"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in lines if line.startswith(("| 1 ", "| 8 "))]
    assert [(r[0], r[1], r[2]) for r in rows] == [("| 1", "40", "0"), ("| 8", "40", "0")]
    assert int(rows[0][6]) == 40  # one client, one request at a time: 40 batches of one
