"""Search results drawn as a PNG contact sheet (`retrieval.py search --grid`).

Example:
```python
save_grid(index, index.search(query, 9)[0], "hits.png", title="a red car")
```
"""

from __future__ import annotations

import io
import os

import numpy as np

from dualencoder.search.errors import RetrievalError
from dualencoder.search.index import EmbeddingIndex, Hit


def save_grid(index: EmbeddingIndex, hits: list[Hit], out_path, *, thumb: int = 192,
              columns: int | None = None, title: str | None = None) -> None:
    """Write the hit images as a PNG grid with rank, score and name under each thumbnail."""
    from PIL import Image, ImageDraw, ImageOps  # noqa: PLC0415

    if not hits:
        raise RetrievalError("no results to draw")
    columns = columns or min(len(hits), max(1, int(np.ceil(np.sqrt(len(hits))))))
    rows = int(np.ceil(len(hits) / columns))
    label_h, head_h, pad = 30, (24 if title else 0), 6
    cell_w, cell_h = thumb + pad, thumb + label_h + pad
    canvas = Image.new("RGB", (columns * cell_w + pad, head_h + rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 6), title[:120], fill="black")
    for n, hit in enumerate(hits):
        x, y = pad + (n % columns) * cell_w, head_h + pad + (n // columns) * cell_h
        try:
            data, _ = index.image_bytes(hit.id)
            with Image.open(io.BytesIO(data)) as img:
                tile = ImageOps.pad(img.convert("RGB"), (thumb, thumb), color="#eeeeee")
        except (RetrievalError, OSError, ValueError):
            tile = Image.new("RGB", (thumb, thumb), "#cc9999")
        canvas.paste(tile, (x, y))
        name = hit.path if len(hit.path) <= 28 else "..." + hit.path[-25:]
        draw.text((x, y + thumb + 2), f"{n + 1}. {hit.score:.3f}", fill="black")
        draw.text((x, y + thumb + 15), name, fill="#444444")
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path, format="PNG")
