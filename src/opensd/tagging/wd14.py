"""SmilingWolf's WD14 taggers (wd-v1-4-*-tagger-v2, wd-*-tagger-v3): an ONNX image classifier and its
selected_tags.csv (tag_id, name, category, count; one row per output), run through onnxruntime.

Where the files live (ComfyUI-WD14-Tagger's layout): the models folder's ``wd14_tagger/`` holds
``<name>.onnx`` and ``<name>.csv`` side by side (the Hugging Face repository's model.onnx and
selected_tags.csv, renamed), or a folder ``<name>/`` holding ``model.onnx`` and ``selected_tags.csv``
as downloaded. The model is called by ``<name>`` (".onnx" may be added); only names listed from that
folder are opened.

The input (SmilingWolf's own preprocessing): transparency flattened onto white, the picture padded to a
white square (centred, the odd pixel after it) and resized (bicubic) to the model's input size, read
from its input shape (batch, size, size, 3); pixel values 0..255 as float32 in BGR order, no
normalisation (a picture longer than 4 input sizes is first shrunk with a box filter, so its square stays
small). The output: one sigmoid score per csv row.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidArgument
from ..one_loaded import OneLoaded, file_stamp
from ..onnx_files import onnxruntime, session
from ..safe_paths import inside, is_file, name_problem
from .tag_text import Scores

KIND = "wd14_tagger"
LABEL = "wd14 tagger"
MAX_CSV_BYTES = 16 << 20  # a real one is about 300 KB
PAD_LIMIT = 4  # pictures longer than this many model sizes are shrunk before the padding


@dataclass(frozen=True)
class TaggerFiles:
    name: str
    model: Path
    labels: Path | None  # None: the csv is missing


def installed(folders) -> dict[str, TaggerFiles]:
    """name -> files of every tagger in the models folder's wd14_tagger folders."""
    out: dict[str, TaggerFiles] = {}
    for m in folders.list(KIND) if folders is not None else []:
        name, path = m.name[:-len(".onnx")], Path(m.path)
        csvs = [path.stem + ".csv"]
        if path.stem.lower() == "model" and "/" in name:  # <name>/model.onnx as downloaded
            name = name.rsplit("/", 1)[0]
            csvs.append("selected_tags.csv")
        labels = [p for p in (inside(path.parent, c) for c in csvs) if p is not None and is_file(p)]
        out.setdefault(name, TaggerFiles(name, path, labels[0] if labels else None))
    return out


def where(name: str = "<name>") -> str:
    return (f"put {name}.onnx and {name}.csv in models/{KIND}/ (the model.onnx and selected_tags.csv of "
            f"huggingface.co/SmilingWolf/{name}, renamed), or that folder as models/{KIND}/{name}/")


def find(folders, name) -> TaggerFiles:
    """The installed tagger `name`, or an InvalidArgument naming what is missing and where it goes."""
    problem = name_problem(name, LABEL)
    if problem:
        raise InvalidArgument(problem)
    key = name.replace("\\", "/").strip()
    key = key[:-len(".onnx")] if key.lower().endswith(".onnx") else key
    models = installed(folders)
    hit = models.get(key) or next((f for n, f in models.items() if n.lower() == key.lower()), None)
    if hit is None:
        known = ", ".join(sorted(models)) or "none"
        raise InvalidArgument(f"{LABEL}: no model named {name!r} (installed: {known}); {where(key or '<name>')}")
    if hit.labels is None:
        raise InvalidArgument(f"{LABEL}: {hit.name}: its tag list is missing: put the model's selected_tags.csv "
                              f"beside {hit.model.name} as {hit.model.stem}.csv")
    return hit


def default_name(folders, label: str = LABEL) -> str:
    """The tagger used when none is named: the first installed by name."""
    models = sorted(installed(folders), key=str.lower)
    if not models:
        raise InvalidArgument(f"{label}: no WD14 tagger is installed; {where()}")
    return models[0]


def read_labels(path: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(names, categories) of a selected_tags.csv, or an InvalidArgument saying what is wrong with it."""
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_CSV_BYTES else None
    except OSError as e:
        raise InvalidArgument(f"{LABEL}: cannot read {path.name} ({e.strerror})") from None
    if data is None:
        raise InvalidArgument(f"{LABEL}: {path.name} is over {MAX_CSV_BYTES >> 20} MB: not a tag list")
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InvalidArgument(f"{LABEL}: {path.name} is not a CSV tag list ({e})") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise InvalidArgument(f"{LABEL}: {path.name} is not a tag list: expected the columns "
                              "tag_id,name,category,count and at least one row")
    names, categories = [], []
    for k, row in enumerate(rows, 2):
        try:
            categories.append(int(row["category"]))
        except (TypeError, ValueError):
            raise InvalidArgument(f"{LABEL}: {path.name} line {k}: category {row['category']!r} is not a "
                                  "number") from None
        names.append(row["name"] or "")
    return tuple(names), tuple(categories)


@dataclass
class Tagger:
    name: str
    session: object  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    size: int
    names: tuple[str, ...]
    categories: tuple[int, ...]


def _shape_checked(files: TaggerFiles, sess, count: int) -> tuple[str, str, int]:
    """(input name, output name, input size) of a session that fits a WD14 tagger with `count` tags."""
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    shape = list(inp.shape)
    fits = len(shape) == 4 and shape[3] == 3 and isinstance(shape[1], int) and shape[1] == shape[2] and shape[1] > 0
    if not fits or inp.type != "tensor(float)":
        raise InvalidArgument(f"{LABEL}: {files.model.name} is not a WD14 tagger: its input is {inp.type} "
                              f"{shape}, not float (batch, size, size, 3)")
    width = out.shape[-1] if out.shape else None
    if isinstance(width, int) and width != count:
        raise InvalidArgument(f"{LABEL}: {files.model.name} scores {width} tags but {files.labels.name} lists "
                              f"{count}: the csv belongs to another model")
    return inp.name, out.name, int(shape[1])


_tagger = OneLoaded()


def load(files: TaggerFiles, device: str = "cpu") -> Tagger:
    """The tagger of `files` (find's), kept loaded until another one is asked for (or the files change)."""
    try:
        key = (file_stamp(files.model), file_stamp(files.labels), device)
    except OSError as e:
        raise InvalidArgument(f"{LABEL}: {files.name}: cannot read its files ({e.strerror})") from None

    def make() -> Tagger:
        names, categories = read_labels(files.labels)
        sess = session(onnxruntime(LABEL, "tagger"), files.model, device, LABEL)
        return Tagger(files.name, sess, *_shape_checked(files, sess, len(names)), names, categories)

    return _tagger.get(key, make)


def preprocess(image, size: int) -> np.ndarray:
    """The (1, size, size, 3) float32 BGR input for a PIL image."""
    if not isinstance(image, Image.Image):
        raise InvalidArgument(f"{LABEL}: expected an image, got {type(image).__name__}")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    w, h = image.size
    if max(w, h) > PAD_LIMIT * size:  # a long strip's square would be huge: shrink it first (box filter)
        k = PAD_LIMIT * size / max(w, h)
        image = image.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)
        w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, np.float32)[None, :, :, ::-1])


def score(tagger: Tagger, image) -> Scores:
    """The tagger's score for every tag of its csv, for one picture."""
    x = preprocess(image, tagger.size)
    try:
        out = tagger.session.run([tagger.output_name], {tagger.input_name: x})[0]
    except Exception as e:  # onnxruntime's own error kinds
        raise InvalidArgument(f"{LABEL}: {tagger.name} failed to run ({e})") from None
    out = np.asarray(out, np.float64)
    if out.shape != (1, len(tagger.names)):
        raise InvalidArgument(f"{LABEL}: {tagger.name} answered {list(out.shape)} scores for "
                              f"{len(tagger.names)} tags in its csv: the csv belongs to another model")
    return Scores(tagger.names, tagger.categories, tuple(float(p) for p in out[0]))


def tag(folders, name: str, image, device: str = "cpu") -> Scores:
    """Scores of the installed tagger `name` for `image` (a PIL image)."""
    return score(load(find(folders, name), device), image)
