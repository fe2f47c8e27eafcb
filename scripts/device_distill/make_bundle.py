"""Pack what the GPU distillation run needs into gpu/ (git-ignored), under the device tool's 64 MiB.

The teacher's token embedding is 12.65 M of its 25 M parameters, and the run only ever encodes the
training captions, the negative-prompt bank and the empty prompt: the other rows are zeroed (the
encodings of every text the run uses are checked to be unchanged), so the file compresses with xz.
"""
import lzma
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from opensd.training.builtin import ARCHS, NEGATIVE_BANK
from opensd.training.builtin_sampling import tokenize
from opensd.training.builtin_teacher import encode_captions, negative_prompt_ids
from opensd.training.emoji_data import load_split

SRC = Path("runs/v1/opensd-emoji-v1.safetensors")  # the teacher (git show 195a7c3:src/opensd/assets/builtin/...)
OUT = Path("gpu")
KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"

te = ARCHS["v1"].text_encoders[0]
train = load_split(Path("data/emoji"), "train")
ids = torch.cat([tokenize(train.captions, te), tokenize([""], te),
                 negative_prompt_ids(train.captions, NEGATIVE_BANK, te)])
used = torch.unique(ids)
with safe_open(SRC, "pt") as f:
    meta = f.metadata()
    sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
keep = torch.zeros(len(sd[KEY]), dtype=torch.bool)
keep[used] = True
sd[KEY] = sd[KEY] * keep[:, None].to(sd[KEY].dtype)
print(f"{int(keep.sum())} of {len(keep)} token rows used")
teacher_path = Path("/tmp/teacher-trimmed.safetensors")
save_file(sd, teacher_path, metadata=meta)

# the encodings the run uses are unchanged
from opensd.pipeline.loader import load_model as load

full, trimmed = load(SRC).model, load(teacher_path).model
a = encode_captions(full.cond_stage_model, ids[::7])
b = encode_captions(trimmed.cond_stage_model, ids[::7])
assert torch.equal(a, b), (a - b).abs().max()
print("encodings identical on", len(a), "texts")

for src, dst in [(teacher_path, OUT / "teacher.safetensors.xz"),
                 (Path("data/emoji/train.npz"), OUT / "data/train.npz.xz"),
                 (Path("data/emoji/heldout.npz"), OUT / "data/heldout.npz.xz")]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, lzma.open(dst, "wb", preset=9) as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
    print(dst, dst.stat().st_size)
for name in ("manifest.json", "train.json", "heldout.json", "concepts.json"):
    shutil.copy(Path("data/emoji") / name, OUT / "data" / name)
