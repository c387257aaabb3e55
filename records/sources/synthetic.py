"""The embedded default dataset: seeded, captioned scenes of coloured shapes drawn with PIL.

Scenes hold one to three shapes (6 shapes x 6 colours, small or large, anywhere in the frame) on
plain, gradient or lightly noisy backgrounds, each with 3-5 captions from a small grammar
("a small red circle to the left of a large blue square", "a green star", ...). Shapes are big
and clean so a tiny model learns them in a few CPU minutes at 64 px.

Splits:
    train, val: captioned scenes. They never contain a held-out colour-shape combination, in
        their images or their captions.
    zeroshot: class-folder records, one shape per image, labelled with one of the 36 classes
        "<colour> <shape>" (balanced), including the held-out combinations; the manifest's
        `source_info` lists them (`held_out`, `held_out_labels`) so evaluation can report seen
        and unseen classes apart.

Held-out combinations (by default, one per colour and one per shape, so every word is still
seen in training): red star, green diamond, blue triangle, yellow cross, purple circle,
orange square.

Every image is a pure function of `(seed, split, index)`, so a build is byte-for-byte
reproducible and fast (thousands of images per second).

Example:
>>> from records.build import build_records
>>> build_records("synthetic", "data/synth_train", num_images=5000, image_size=64, seed=0)
>>> build_records("synthetic", "data/synth_zeroshot", split="zeroshot", num_images=720)
"""

from __future__ import annotations

import io
import math

from records.cli import positive_int
from records.sources.base import Source, SourceItem, argument, records_error

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS = {
    "red": (220, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 210, 25),
    "purple": (145, 45, 195),
    "orange": (245, 135, 20),
}
HELD_OUT = ("red star", "green diamond", "blue triangle", "yellow cross", "purple circle",
            "orange square")
CLASS_NAMES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
SPLITS = {"train": 0, "val": 1, "zeroshot": 2}
DEFAULT_NUM_IMAGES = {"train": 5000, "val": 500, "zeroshot": 720}

_LIGHT_BG = ((245, 245, 245), (218, 218, 218), (232, 224, 200), (205, 214, 224), (226, 232, 214))
_DARK_BG = ((55, 55, 55), (38, 44, 62), (88, 82, 76), (108, 108, 114), (50, 70, 60))
_SUPERSAMPLE = 2


class SyntheticSource(Source):
    """Seeded captioned shape scenes (`train`/`val`) or a class-folder zero-shot split.

    Args:
        num_images: number of images (default 5000 train, 500 val, 720 zeroshot).
        image_size: side in pixels (32..512, default 64).
        seed: generator seed; same seed, split and size give identical bytes.
        split: `"train"`, `"val"` or `"zeroshot"`.
        held_out: colour-shape combinations ("red star", ...) kept out of train and val
            (default `HELD_OUT`).
        skip_bad: accepted for a uniform source interface (synthetic data is never bad).
    """

    name = "synthetic"
    description = "seeded captioned shape scenes (the embedded default)"
    arguments = (
        argument("--split", default="train", choices=["train", "val", "zeroshot"],
                 help="train/val: captioned scenes; zeroshot: class-folder records of the 36 "
                      "'<colour> <shape>' classes incl. held-out ones"),
        argument("--num-images", type=positive_int, default=None,
                 help="images (default 5000 train, 500 val, 720 zeroshot)"),
        argument("--image-size", type=positive_int, default=64, help="side in px (default 64)"),
        argument("--seed", type=int, default=0, help="generator seed (default 0)"),
    )

    def __init__(self, *, num_images=None, image_size=64, seed=0, split="train", held_out=None,
                 skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        if split not in SPLITS:
            raise records_error(f"synthetic: unknown split {split!r}; choose one of "
                                f"{', '.join(SPLITS)}")
        self.split = split
        self.num_images = int(DEFAULT_NUM_IMAGES[split] if num_images is None else num_images)
        if self.num_images < 1:
            raise records_error(f"synthetic: num_images must be >= 1, got {num_images}")
        self.image_size = int(image_size)
        if not 32 <= self.image_size <= 512:
            raise records_error(f"synthetic: image_size must be in 32..512, got {image_size}")
        self.seed = int(seed)
        held = HELD_OUT if held_out is None else tuple(held_out)
        unknown = [h for h in held if h not in CLASS_NAMES]
        if unknown:
            raise records_error(f"synthetic: held_out {unknown} are not '<colour> <shape>' classes "
                                f"(colours {list(COLORS)}, shapes {list(SHAPES)})")
        self.held_out = held
        self.allowed = tuple(tuple(c.split(" ")) for c in CLASS_NAMES if c not in held)
        if split == "zeroshot":
            self.class_names = list(CLASS_NAMES)
        self.info = {
            "split": split, "seed": self.seed, "image_size": self.image_size,
            "num_images": self.num_images, "colors": list(COLORS), "shapes": list(SHAPES),
            "held_out": list(held),
            "held_out_labels": [CLASS_NAMES.index(h) for h in held],
        }

    def __len__(self):
        return self.num_images

    def _items(self):
        for i in range(self.num_images):
            yield self.make_item(i)

    def make_item(self, i: int) -> SourceItem:
        """The `i`-th item of this split (a pure function of seed, split, size and `i`)."""
        scene = self.scene(i)
        return SourceItem(scene["image_id"], scene["image"], scene["captions"], scene["label"])

    def scene(self, i: int) -> dict:
        """The `i`-th scene: `image_id`, `image` (JPEG bytes), `captions`, `label`, `objects`
        (each `{"color", "shape", "size", "r", "cx", "cy"}`) and `background`."""
        import numpy as np

        rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
        if self.split == "zeroshot":
            label = self._zeroshot_label(i)
            pairs = [tuple(CLASS_NAMES[label].split(" "))]
            image_id, captions = f"zeroshot-{i:06d}", []
        else:
            label, image_id = -1, f"{self.split}-{i:06d}"
            count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
            picks = rng.choice(len(self.allowed), size=min(count, len(self.allowed)),
                               replace=False)
            pairs = [self.allowed[k] for k in picks]
        objects = _place(rng, self.image_size, pairs)
        background = _background(rng, self.image_size)
        image = _render(rng, background, objects)
        if self.split != "zeroshot":
            captions = _captions(rng, objects, background["tone"], self.image_size)
        return {"image_id": image_id, "image": image, "captions": captions, "label": label,
                "objects": objects, "background": {k: v for k, v in background.items()
                                                   if k != "pixels"}}

    def _zeroshot_label(self, i: int) -> int:
        """Balanced labels: each block of 36 images is a seeded permutation of the classes."""
        import numpy as np

        block, offset = divmod(i, len(CLASS_NAMES))
        perm = np.random.default_rng([self.seed, SPLITS["zeroshot"], 1 << 30, block]).permutation(
            len(CLASS_NAMES))
        return int(perm[offset])


def _place(rng, size, pairs):
    """Sizes and non-overlapping positions for the (colour, shape) pairs; may drop one."""
    objects = []
    for color, shape in pairs:
        for attempt in range(40):
            big = (rng.random() < 0.5) if attempt < 20 else False
            radius = size * (rng.uniform(0.19, 0.23) if big else rng.uniform(0.12, 0.14))
            lo, hi = radius + 1, size - radius - 1
            cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
            if all(math.hypot(cx - o["cx"], cy - o["cy"]) >= radius + o["r"] + 0.06 * size
                   for o in objects):
                objects.append({"color": color, "shape": shape, "size": "large" if big else "small",
                                "r": radius, "cx": cx, "cy": cy})
                break
    return objects


def _background(rng, size):
    import numpy as np

    tone = "light" if rng.random() < 0.6 else "dark"
    palette = _LIGHT_BG if tone == "light" else _DARK_BG
    kind = rng.choice(["plain", "gradient", "noise"])
    n = size * _SUPERSAMPLE
    a = np.array(palette[rng.integers(len(palette))], np.float32)
    if kind == "gradient":
        b = np.array(palette[rng.integers(len(palette))], np.float32) + rng.uniform(-20, 20, 3)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1)
        t = (math.cos(angle) * xx + math.sin(angle) * yy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = a + t[..., None] * (b - a)
    else:
        pixels = np.broadcast_to(a, (n, n, 3)).astype(np.float32)
        if kind == "noise":
            noise = rng.normal(0, 9, (size, size, 3)).astype(np.float32)
            pixels = pixels + noise.repeat(_SUPERSAMPLE, 0).repeat(_SUPERSAMPLE, 1)
    return {"pixels": np.clip(pixels, 0, 255).astype(np.uint8), "tone": tone, "kind": str(kind)}


def _polygon(shape, cx, cy, r):
    if shape == "square":
        h = 0.82 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        cy += 0.15 * r
        return [(cx + 1.1 * r * math.cos(a), cy + 1.1 * r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.1 * r + rad * math.sin(a)))
        return pts
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
    if shape == "cross":
        w = 0.34 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
                (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
                (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]
    raise ValueError(shape)


def _render(rng, background, objects) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.fromarray(background["pixels"], "RGB")
    draw = ImageDraw.Draw(image)
    s = _SUPERSAMPLE
    for obj in objects:
        base = COLORS[obj["color"]]
        fill = tuple(int(min(255, max(0, v + rng.integers(-12, 13)))) for v in base)
        cx, cy, r = obj["cx"] * s, obj["cy"] * s, obj["r"] * s
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=fill)
    image = image.reduce(s)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92, subsampling=0)
    return out.getvalue()


# ---- captions -------------------------------------------------------------------------------

def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _np(obj, sized: bool) -> str:
    words = ([obj["size"]] if sized else []) + [obj["color"], obj["shape"]]
    return _article(" ".join(words))


def _where(obj, size) -> str:
    h = "left" if obj["cx"] < 0.4 * size else "right" if obj["cx"] > 0.6 * size else "middle"
    v = "top" if obj["cy"] < 0.4 * size else "bottom" if obj["cy"] > 0.6 * size else "center"
    if h == "middle" and v == "center":
        return "in the center"
    if h == "middle":
        return f"at the {v}"
    if v == "center":
        return f"on the {h}"
    return f"in the {v} {h} corner"


def _relation(a, b, size):
    """How `a` relates to `b` and the inverse, e.g. ("to the left of", "to the right of")."""
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
    if abs(dx) >= abs(dy) and abs(dx) > 0.15 * size:
        return ("to the left of", "to the right of") if dx > 0 else \
            ("to the right of", "to the left of")
    if abs(dy) > 0.15 * size:
        return ("above", "below") if dy > 0 else ("below", "above")
    return ("next to", "next to")


def _join(phrases) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _captions(rng, objects, tone, size) -> list:
    bg = f"on a {tone} background"
    if len(objects) == 1:
        o = objects[0]
        cands = [
            _np(o, True), _np(o, False), f"{_np(o, True)} {_where(o, size)}",
            f"{_np(o, False)} {bg}", f"a {o['shape']} that is {o['color']}",
            f"a picture of {_np(o, True)}", f"a {o['size']} {o['shape']} colored {o['color']}",
            f"one {o['color']} {o['shape']} {_where(o, size)}",
        ]
    else:
        order = sorted(objects, key=lambda o: o["cx"])
        shuffled = [objects[k] for k in rng.permutation(len(objects))]
        a, b = shuffled[0], shuffled[1]
        rel, inv = _relation(a, b, size)
        count = "two" if len(objects) == 2 else "three"
        cands = [
            _join([_np(o, False) for o in order]),
            _join([_np(o, True) for o in shuffled]),
            f"{count} shapes: " + _join([_np(o, False) for o in shuffled]),
            f"{_join([_np(o, False) for o in order])} {bg}",
            f"{_np(a, True)} {rel} {_np(b, True)}",
            f"{_np(b, False)} {inv} {_np(a, False)}",
        ]
        if len(objects) == 3:
            c = shuffled[2]
            cands.append(f"{_np(a, False)} {rel} {_np(b, False)}, and {_np(c, True)}")
        else:
            cands.append(f"{_np(a, False)} {rel} {_np(b, False)} {bg}")
    cands = list(dict.fromkeys(cands))
    k = int(rng.integers(3, 6))
    picks = rng.choice(len(cands), size=min(k, len(cands)), replace=False)
    return [cands[j] for j in sorted(picks)]
