"""Build a tiny ReT-2, encode a few generated image/text items and print their similarity matrix.

A placeholder for the full demo (train, evaluate, plot), which needs the training and evaluation packages.
"""

import torch
from PIL import Image, ImageDraw

from training.tiny import tiny_model_and_processor

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}


def draw(color: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    box = (12, 12, 52, 52)
    canvas = ImageDraw.Draw(image)
    (canvas.ellipse if shape == "circle" else canvas.rectangle)(box, fill=COLORS[color])
    return image


def main() -> None:
    items = [("red", "circle"), ("green", "square"), ("blue", "circle")]
    model, processor = tiny_model_and_processor([w for item in items for w in item], image_size=64)
    queries = processor(text=[f"a {c} {s}" for c, s in items], images=[None] * 3, return_tensors="pt")
    documents = processor(text=[None, f"a {items[1][0]} {items[1][1]}", None], images=[draw(*i) for i in items])
    with torch.no_grad():
        scores = model.similarity(model.encode_queries(**queries), model.encode_documents(**documents))
    print(f"ReT-2 (random init, {sum(p.numel() for p in model.parameters()):,} parameters)")
    print("cosine similarity, text queries (rows) x image / image+text documents (columns):")
    for (color, shape), row in zip(items, scores.tolist()):
        print(f"  {color + ' ' + shape:14s}" + "".join(f"{s:9.4f}" for s in row))


if __name__ == "__main__":
    main()
