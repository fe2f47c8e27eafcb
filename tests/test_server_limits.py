"""How much the server takes on: A1111 calls wait in line for a full queue (bounded, then 429), and
one request's total work is capped by a budget (--work-budget) on both APIs."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from server_live import BASE, COMFY_GRAPH, LiveServer

from opensd import cli
from opensd.errors import InvalidArgument
from opensd.server import work_budget
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.a1111_option_table import DEFAULTS
from opensd.server.a1111_run import plan
from opensd.server.app import create_app
from opensd.server.settings import Settings

BODY = {"prompt": "a tiny emoji", "steps": 1, "width": 64, "height": 64, "seed": 1}


def cost(**fields) -> float:
    req = Txt2ImgRequest(**fields)
    kw, _ = plan(req, False, 20_000, DEFAULTS)
    return work_budget.a1111_cost(kw, req.n_iter)[0]


def test_a_burst_of_a1111_calls_waits_in_line_instead_of_429(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out", queue_size=2, max_waiting=3, start_worker=False)
    results: list[tuple[int, str | None, str]] = []
    lock = threading.Lock()
    with LiveServer(settings) as live:
        state = live.state

        def one(i: int):
            r = httpx.post(live.url + "/sdapi/v1/txt2img", json={**BODY, "seed": i}, timeout=300)
            with lock:
                results.append((r.status_code, r.headers.get("retry-after"), r.text))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(7)]
        for th in threads:
            th.start()
        deadline = time.time() + 60
        while (state.queue.pending_count(), state.waiting.waiting, len(results)) != (2, 3, 2) and time.time() < deadline:
            time.sleep(0.02)
        assert (state.queue.pending_count(), state.waiting.waiting) == (2, 3)  # 2 queued, 3 waiting
        refused = [r for r in results if r[0] == 429]
        assert len(refused) == 2 and all(int(ra) >= 1 and "--max-waiting" in text for _, ra, text in refused)
        state.queue.start()
        for th in threads:
            th.join(300)
        assert client_ok(live)
    assert Counter(code for code, _, _ in results) == {200: 5, 429: 2}


def client_ok(live) -> bool:
    return httpx.post(live.url + "/sdapi/v1/txt2img", json=BODY, timeout=300).status_code == 200


def test_the_default_budget_fits_a_local_user_and_refuses_a_runaway():
    budget = Settings().work_budget
    assert cost(batch_size=8, n_iter=4, width=1024, height=1024, steps=50) < budget / 4
    assert cost(batch_size=64, n_iter=100, width=1024, height=1024, steps=20) > budget
    plain = cost(width=512, height=512, steps=20)
    assert cost(width=512, height=512, steps=20, enable_hr=True, hr_scale=2) == pytest.approx(plain * 5)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    with TestClient(create_app(Settings(outputs_dir=root, work_budget=1.0)), base_url=BASE) as c:
        yield c


def test_a1111_request_over_budget_is_refused_before_any_work(client):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "batch_size": 4, "n_iter": 100, "steps": 50})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("work: ") and "82 megapixel-steps" in detail and "budget of 1" in detail
    assert "--work-budget" in detail
    hires = client.post("/sdapi/v1/txt2img", json={**BODY, "width": 512, "height": 512, "steps": 2,
                                                   "enable_hr": True, "hr_scale": 2})
    assert hires.status_code == 422 and "512x512 x 2 steps + 1024x1024 x 2 steps" in hires.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json=BODY).status_code == 200


def test_comfy_graph_over_budget_is_refused(client):
    big = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in COMFY_GRAPH.items()}
    big["5"]["inputs"].update(width=1024, height=1024, batch_size=64)
    r = client.post("/prompt", json={"prompt": big})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "work:" in message and "node 3: 64 images of 1024x1024 x 2 steps" in message and "--work-budget" in message
    ok = client.post("/prompt", json={"prompt": COMFY_GRAPH})
    assert ok.status_code == 200 and ok.json()["prompt_id"]


def test_serve_flags():
    from opensd.cli.serve import settings_from

    s = settings_from(cli.build_parser().parse_args(["serve", "--max-waiting", "5", "--work-budget", "50"]))
    assert (s.max_waiting, s.work_budget) == (5, 50.0)
    for flags, named in ((["--work-budget", "0"], "work-budget"), (["--max-waiting", "-1"], "max-waiting")):
        with pytest.raises(InvalidArgument, match=named):
            settings_from(cli.build_parser().parse_args(["serve", *flags]))


def test_a_large_firstpass_image_counts_its_encoding(client):
    """A latent hires upscaler VAE-encodes a given firstpass_image at its own size, for every image
    (as A1111 does): a 3000 x 3000 one behind a 64 x 64 request held the server 283 s under a budget
    of 5 megapixel-steps. Its encoding now counts as one step at its size."""
    import base64
    import io

    from PIL import Image

    def png(side: int) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (90, 20, 20)).save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    hires = {**BODY, "enable_hr": True, "hr_scale": 1, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    r = client.post("/sdapi/v1/txt2img", json={**hires, "firstpass_image": png(1200)})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "images of 64x64 x 1 steps + 64x64 x 1 steps + a 1200x1200 firstpass_image encoded" in detail, detail
    # an upscaler that resizes it to the target first encodes only the target's size
    assert client.post("/sdapi/v1/txt2img", json={**hires, "hr_upscaler": "Lanczos",
                                                  "firstpass_image": png(1200)}).status_code == 200
    assert client.post("/sdapi/v1/txt2img", json={**hires, "firstpass_image": png(64)}).status_code == 200


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _graph(**changes) -> dict:
    graph = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in COMFY_GRAPH.items()}
    graph["5"]["inputs"].update(width=512, height=512, batch_size=2)
    graph["3"]["inputs"]["steps"] = 20
    return graph | changes


def _upscaled_8192(decoder: str = "VAEDecode") -> dict:
    """A 64x64 empty latent enlarged 8x, 4x and 4x and decoded: an 8192x8192 image, no sampler."""
    graph = {"4": COMFY_GRAPH["4"], "5": _node("EmptyLatentImage", width=64, height=64, batch_size=1),
             "u1": _node("LatentUpscaleBy", samples=["5", 0], upscale_method="nearest-exact", scale_by=8.0),
             "u2": _node("LatentUpscaleBy", samples=["u1", 0], upscale_method="nearest-exact", scale_by=4.0),
             "u3": _node("LatentUpscaleBy", samples=["u2", 0], upscale_method="nearest-exact", scale_by=4.0),
             "8": _node(decoder, samples=["u3", 0], vae=["4", 2]), "9": COMFY_GRAPH["9"]}
    if decoder == "VAEDecodeTiled":
        graph["8"]["inputs"].update(tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8)
    return graph


def test_a_vae_decode_counts_one_step_at_its_image_size():
    base, _ = work_budget.comfy_cost(_graph(**{"8": _node("PreviewAny", source=["3", 0])}))
    decoded, words = work_budget.comfy_cost(_graph())
    assert base == pytest.approx(2 * 512 * 512 * 20 / 1e6)
    assert decoded - base == pytest.approx(2 * 512 * 512 / 1e6)
    assert "node 8: 2 images of 512x512 decoded" in words
    plain, words = work_budget.comfy_cost(_upscaled_8192())
    tiled, _ = work_budget.comfy_cost(_upscaled_8192("VAEDecodeTiled"))
    assert plain == tiled == pytest.approx(8192 * 8192 / 1e6) and "node 8: 1 images of 8192x8192 decoded" in words


def test_an_encode_counts_its_image_and_a_sampler_its_enlarged_latent():
    image = _node("ImageScale", image=["l", 0], upscale_method="nearest-exact", width=4096, height=2048, crop="disabled")
    graph = {"l": _node("LoadImage", image="x.png"), "s": image, "e": _node("VAEEncodeTiled", pixels=["s", 0]),
             "u": _node("LatentUpscale", samples=["e", 0], upscale_method="nearest-exact", width=0, height=1024,
                        crop="disabled"),
             "k": _node("KSampler", latent_image=["u", 0], steps=10), "b": _node("ImageScaleBy", image=["l", 0])}
    cost, words = work_budget.comfy_cost(graph)
    assert cost == pytest.approx((4096 * 2048 + 2048 * 1024 * 10) / 1e6)
    assert "node e: 1 images of 4096x2048 encoded" in words and "node k: 1 images of 2048x1024 x 10 steps" in words
    graph["r"] = _node("RepeatImageBatch", image=["s", 0], amount=3)
    graph["e"]["inputs"]["pixels"] = ["r", 0]
    assert "node e: 3 images of 4096x2048 encoded" in work_budget.comfy_cost(graph)[1]
    # a loaded image's size is known only when the graph runs: not counted, not refused
    graph["e"]["inputs"]["pixels"] = ["l", 0]
    assert work_budget.comfy_cost(graph) == (0.0, "")


def test_every_shipped_and_example_comfy_graph_fits_the_default_budget():
    budget, graphs = Settings().work_budget, [COMFY_GRAPH]
    for path in (Path(__file__).parent / "comfy_workflows").glob("*.json"):
        graph = json.loads(path.read_text())
        if all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
            graphs.append(graph)
    assert len(graphs) > 1
    for graph in graphs:
        assert work_budget.comfy_cost(graph)[0] < budget / 10


def test_a_decode_of_an_8192_image_is_refused_before_any_work(client):
    r = client.post("/prompt", json={"prompt": _upscaled_8192()})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "work: this request asks for 67 megapixel-steps (node 8: 1 images of 8192x8192 decoded)" in message
    queue = client.get("/queue").json()
    assert "--work-budget" in message
    assert not any("u3" in item[2] for item in queue["queue_running"] + queue["queue_pending"])
