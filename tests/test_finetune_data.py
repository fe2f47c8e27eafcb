"""Fine-tuning datasets: kohya folder convention, caption encodings, buckets, and every kind of bad
data reported up front with the file named."""
import pytest
from PIL import Image

from opensd.errors import InvalidArgument
from opensd.training.finetune_data import (
    load_dataset,
    make_buckets,
    nearest_bucket,
    read_caption,
    stack,
)


def img(path, size=(64, 64), color=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else (*color, 0)).save(path)
    return path


def test_kohya_folders_captions_and_repeats(tmp_path):
    img(tmp_path / "top.png")
    (tmp_path / "top.txt").write_text("a red square, flat\n\nsecond line ignored", encoding="utf-8")
    img(tmp_path / "10_sks dog" / "a.png")
    img(tmp_path / "10_sks dog" / "b.jpg")
    (tmp_path / "10_sks dog" / "b.txt").write_bytes("\ufeffsks dog, running".encode("utf-8"))  # UTF-8 BOM
    img(tmp_path / "10_sks dog" / "c.webp")
    (tmp_path / "10_sks dog" / "c.txt").write_bytes("sks dog, café".encode("utf-16"))  # UTF-16 with BOM
    img(tmp_path / "misc_stuff" / "d.png")  # no number: a plain folder, repeat 1
    img(tmp_path / ".hidden" / "e.png")
    (tmp_path / "notes.md").write_text("not an image")
    ds = load_dataset(tmp_path, 64, step=8, default_caption="default")
    got = {it.path.name: (it.caption, it.repeats) for it in ds.items}
    assert got == {"top.png": ("a red square, flat", 1), "a.png": ("sks dog", 10), "b.jpg": ("sks dog, running", 10),
                   "c.webp": ("sks dog, café", 10), "d.png": ("default", 1)}
    assert ds.num_images == 5 and ds.num_repeated == 32
    assert ds.tag_frequency()["10_sks dog"] == {"sks dog": 3, "running": 1, "café": 1}


def test_buckets_keep_aspect_and_batches_never_mix_them(tmp_path):
    for i in range(3):
        img(tmp_path / f"wide{i}.png", (128, 64))
        img(tmp_path / f"square{i}.png", (70, 70))
    img(tmp_path / "tall.png", (40, 90))
    ds = load_dataset(tmp_path, 64, step=8)
    buckets = {it.path.stem: it.bucket for it in ds.items}
    assert buckets["square0"] == (64, 64)
    w, h = buckets["wide0"]
    assert w > h and w * h <= 64 * 64 and w % 8 == 0 and h % 8 == 0 and abs(w / h - 2) < 0.3
    assert buckets["tall"][1] > buckets["tall"][0]
    for _, batch in zip(range(12), ds.batches(2, seed=0)):
        sizes = {ds.items[i].bucket for i, _ in batch[1]}
        assert len(sizes) == 1
        px, _caps = stack(ds, batch[1])
        (bw, bh), = sizes
        assert px.shape[1:] == (3, bh, bw) and px.min() >= -1 and px.max() <= 1
    # every image once per epoch, and a resumed stream continues the same order
    epoch = [i for b in ds.batch_plan(2, 0, 0) for i, _ in b]
    assert sorted(epoch) == list(range(len(ds.items)))
    full = [b for _, (_, b) in zip(range(9), ds.batches(2, 0))]
    assert [b for _, (_, b) in zip(range(4), ds.batches(2, 0, start=5))] == full[5:9]


def test_bucket_sizes():
    b = make_buckets(512, 64)
    assert (512, 512) in b and all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in b)
    w, h = nearest_bucket((1920, 1080), b)
    assert 1.5 < w / h < 2.0


def test_transparent_images_go_on_white(tmp_path):
    img(tmp_path / "clear.png", mode="RGBA")
    ds = load_dataset(tmp_path, 64, step=8)
    assert float(ds.pixels(0).min()) == 1.0  # fully transparent -> white


def test_flip_augmentation_is_off_by_default(tmp_path):
    img(tmp_path / "a.png")
    assert all(not f for b in load_dataset(tmp_path, 64, step=8).batch_plan(1, 0, 0) for _, f in b)
    flips = [f for e in range(8) for b in load_dataset(tmp_path, 64, step=8, flip=True).batch_plan(1, 0, e)
             for _, f in b]
    assert any(flips) and not all(flips)


def test_missing_empty_and_imageless_folders(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_dataset(tmp_path / "nope", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="is empty"):
        load_dataset(tmp_path / "empty", 64)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("caption without image")
    with pytest.raises(InvalidArgument, match="no images"):
        load_dataset(tmp_path / "text", 64)
    with pytest.raises(InvalidArgument, match="resolution"):
        load_dataset(tmp_path / "text", 60, step=8)


def test_all_bad_files_are_named_before_training(tmp_path):
    img(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = img(tmp_path / "5_x" / "trunc.jpg", (64, 64))
    good.write_bytes(good.read_bytes()[:60])  # truncated JPEG
    img(tmp_path / "tiny.png", (1, 1))
    img(tmp_path / "latin1.png")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InvalidArgument) as e:
        load_dataset(tmp_path, 64, step=8)
    msg = str(e.value)
    for name in ("broken.png", "trunc.jpg", "tiny.png", "latin1.txt"):
        assert name in msg
    assert "1x1 is too small" in msg and "not UTF-8" in msg and "4 problem(s)" in msg


def test_read_caption_encodings(tmp_path):
    p = tmp_path / "c.txt"
    for raw in (b"hello", b"\xef\xbb\xbfhello", "hello".encode("utf-16-le").join([b"\xff\xfe", b""]),
                "hello".encode("utf-16-be").join([b"\xfe\xff", b""])):
        p.write_bytes(raw)
        assert read_caption(p) == "hello"
    p.write_bytes("hello".encode("utf-16-le"))  # no BOM: NULs give it away
    with pytest.raises(InvalidArgument, match="c.txt"):
        read_caption(p)
