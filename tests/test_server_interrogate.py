"""A1111's POST /sdapi/v1/interrogate and the tagger extension's /tagger/v1 routes, answered by tiny WD14
taggers (tests/wd14_files.py) in the server's models folder."""
from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from server_live import BASE, models_dir
from wd14_files import picture, write_tagger

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from opensd.server.app import create_app  # noqa: E402
from opensd.server.settings import Settings  # noqa: E402

CAPTION = ("1girl, :d, \\\\m/, blue first, bottom pad, ganyu \\(genshin impact\\), hatsune miku, long hair, "
           "white corner")


def b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _client(root, taggers=True):
    models = models_dir(root)
    if taggers:
        write_tagger(models / "wd14_tagger", "wd-v1-4-moat-tagger-v2")
        write_tagger(models / "wd14_tagger", "wd-vit-tagger-v3", size=6, layout="hf")
    settings = Settings(models_dir=models, outputs_dir=root / "out", max_body_bytes=1 << 20, start_worker=False)
    return TestClient(create_app(settings), base_url=BASE)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with _client(tmp_path_factory.mktemp("tags")) as c:
        yield c


def test_deepdanbooru_without_its_model_is_answered_by_the_first_wd14_tagger(client):
    r = client.post("/sdapi/v1/interrogate", json={"image": b64(picture()), "model": "deepdanbooru"})
    assert r.status_code == 200 and r.json() == {"caption": CAPTION}
    # an installed WD14 model by name: the v3 one sees a resized picture, its corners still white padding
    r = client.post("/sdapi/v1/interrogate", json={"image": b64(picture()), "model": "wd-vit-tagger-v3"})
    assert r.status_code == 200 and "white corner" in r.json()["caption"]


def test_a1111_deepbooru_settings_word_the_caption(client):
    change = {"interrogate_deepbooru_score_threshold": 0.8, "deepbooru_sort_alpha": False,
              "deepbooru_use_spaces": False, "deepbooru_escape": False, "interrogate_return_ranks": True,
              "deepbooru_filter_tags": "white corner, long hair"}
    assert client.post("/sdapi/v1/options", json=change).status_code == 200
    try:
        r = client.post("/sdapi/v1/interrogate", json={"image": b64(picture()), "model": "deepdanbooru"})
        assert r.json()["caption"] == ("(bottom_pad:1.000), (1girl:0.875), (ganyu_(genshin_impact):0.875), "
                                       "(blue_first:0.800)")
    finally:
        client.post("/sdapi/v1/options", json={
            "interrogate_deepbooru_score_threshold": 0.5, "deepbooru_sort_alpha": True, "deepbooru_use_spaces": True,
            "deepbooru_escape": True, "interrogate_return_ranks": False, "deepbooru_filter_tags": ""})


def test_clip_unknown_models_and_bad_images_are_refused_in_words(client):
    r = client.post("/sdapi/v1/interrogate", json={"image": b64(picture())})  # A1111's default model: clip
    assert r.status_code == 422 and "CLIP interrogation" in r.json()["detail"] and "BLIP" in r.json()["detail"]
    r = client.post("/sdapi/v1/interrogate", json={"image": b64(picture()), "model": "blip2"})
    assert r.status_code == 404 and r.json()["detail"].startswith("Model not found: 'blip2'")
    assert "wd-v1-4-moat-tagger-v2, wd-vit-tagger-v3" in r.json()["detail"]
    r = client.post("/sdapi/v1/interrogate", json={"image": "bm90IGFuIGltYWdl", "model": "deepdanbooru"})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/sdapi/v1/interrogate", json={"image": "", "model": "deepdanbooru"})
    assert r.status_code == 422


def test_no_tagger_installed_says_where_to_put_one(tmp_path):
    with _client(tmp_path, taggers=False) as c:
        r = c.post("/sdapi/v1/interrogate", json={"image": b64(picture()), "model": "deepdanbooru"})
        assert r.status_code == 422
        assert "neither DeepDanbooru nor a WD14 tagger is installed" in r.json()["detail"]
        assert "models/wd14_tagger/" in r.json()["detail"] and "torch_deepdanbooru/" in r.json()["detail"]
        assert c.get("/tagger/v1/interrogators").json() == {"models": []}


def test_tagger_extension_routes(client):
    assert client.get("/tagger/v1/interrogators").json() == {"models": ["wd-v1-4-moat-tagger-v2", "wd-vit-tagger-v3"]}
    r = client.post("/tagger/v1/interrogate",
                    json={"image": b64(picture()), "model": "wd-v1-4-moat-tagger-v2", "threshold": 0.7})
    assert r.status_code == 200
    caption = r.json()["caption"]
    assert list(caption) == ["general", "sensitive", "questionable", "explicit", "white_corner", "bottom_pad",
                             "1girl", "ganyu_(genshin_impact)", "blue_first", "long_hair", "hatsune_miku"]
    assert caption["general"] == 0.5 and caption["blue_first"] == pytest.approx(0.8)
    r = client.post("/tagger/v1/interrogate", json={"image": b64(picture()), "model": "wd14-vit-v2"})
    assert r.status_code == 404 and "Model not found: 'wd14-vit-v2'" in r.json()["detail"]
    r = client.post("/tagger/v1/interrogate", json={"image": b64(picture()), "model": "wd-vit-tagger-v3",
                                                    "threshold": 2})
    assert r.status_code == 422


def test_interrogations_run_one_at_a_time(client, monkeypatch):
    """A burst of requests waits its turn (as behind A1111's queue lock) instead of taking every core."""
    import threading
    import time

    from opensd.tagging import wd14

    real, active, most = wd14.tag, [0], [0]
    lock = threading.Lock()

    def counted(*args):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)
        try:
            return real(*args)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(wd14, "tag", counted)
    body = {"image": b64(picture()), "model": "wd-v1-4-moat-tagger-v2"}
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(client.post("/sdapi/v1/interrogate", json=body)
                                                            .status_code)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 4 and most[0] == 1
