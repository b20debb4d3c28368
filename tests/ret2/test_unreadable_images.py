"""`find_unreadable`: every kind of bad image file of a real photo folder found in one pass, each named with why."""

import io

from PIL import Image

from ret2.data.images import find_unreadable, image_problem


def _jpeg(size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def test_every_kind_of_bad_file_is_named(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg())
    png = tmp_path / "good.png"
    Image.new("RGBA", (8, 8)).save(png)
    tiff = tmp_path / "scan.tif"
    Image.new("RGB", (8, 8)).save(tiff)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(_jpeg((400, 300))[:600])
    (tmp_path / "notes.jpg").write_text("not a picture at all")
    paths = sorted(tmp_path.iterdir()) + [tmp_path / "gone.jpg"]
    found = find_unreadable(paths)
    assert sorted(found) == sorted(str(tmp_path / n) for n in ("empty.jpg", "truncated.jpg", "notes.jpg", "gone.jpg"))
    assert found[str(tmp_path / "empty.jpg")] == "empty file"
    assert found[str(tmp_path / "gone.jpg")] == "missing"
    assert found[str(tmp_path / "notes.jpg")].startswith("not an image or an unsupported format")
    assert found[str(tmp_path / "truncated.jpg")].startswith("truncated or corrupt")
    assert image_problem(good) is image_problem(png) is image_problem(tiff) is None
