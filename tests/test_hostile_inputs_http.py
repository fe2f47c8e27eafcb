"""Findings of a hostile-input sweep over every HTTP route (bodies with each field of the wrong type
or size, odd images, junk websocket frames): each case failed (a 500, a hang, a dropped socket)
before its fix and is now a 4xx naming the field, refused before any work."""
from __future__ import annotations

import base64
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.errors import InvalidArgument
from opensd.server.app import create_app
from opensd.server.settings import Settings


def png(size) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "out")
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


T2I = {"prompt": "x", "steps": 1, "width": 64, "height": 64}


def xyz(x_type, x_values, y_type=0, y_values="", z_type=0, z_values="") -> dict:
    return {**T2I, "script_name": "x/y/z plot", "script_args": [x_type, x_values, [], y_type, y_values, [], z_type,
                                                               z_values, [], True, False, False, False, False,
                                                               False, False, 0, False]}
HIRES = {**T2I, "enable_hr": True, "hr_upscaler": "Latent"}

CASES = [  # (id, path, body, text the 422 must contain)
    # was a 500 from the VAE's GroupNorm: a latent upscaler encodes the given first pass at its own size
    ("1x1 firstpass_image", "/sdapi/v1/txt2img", {**HIRES, "firstpass_image": png((1, 1))}, "firstpass_image"),
    # was a 500 from a convolution (padded input 4001 x 2 smaller than its kernel)
    ("1x4000 firstpass_image", "/sdapi/v1/txt2img", {**HIRES, "firstpass_image": png((1, 4000))}, "firstpass_image"),
    # was a plain-text 500 (RecursionError in the dynamic-prompt parser)
    ("nested choices", "/sdapi/v1/txt2img", {**T2I, "prompt": "{a|" * 6000}, "prompt: the '{'"),
    # was a 500 'VAE decode produced NaN/inf even in fp32; the model is broken': 6,000 unclosed '('
    ("emphasis past any float", "/sdapi/v1/txt2img", {**T2I, "prompt": "(a:" * 6000}, "prompt: brackets nested"),
    ("emphasis past the cap", "/sdapi/v1/txt2img", {**T2I, "prompt": "(a:" * 99}, "emphasis"),
    ("a 400-digit weight", "/sdapi/v1/txt2img", {**T2I, "negative_prompt": "(a:" + "9" * 400 + ")"}, "emphasis"),
    # held the server for hours: 5,000 sub-prompts, one network evaluation each per step
    ("5000 ANDs", "/sdapi/v1/txt2img", {**T2I, "prompt": "AND " * 5000}, "sub-prompts joined by AND"),
    ("5000 ANDs counted", "/opensd/v1/tokens", {"prompt": "AND " * 5000}, "sub-prompts joined by AND"),
    # 78 s on the tiny model: 3,000 chunks, a 231,000-token context
    ("3000 BREAKs", "/sdapi/v1/txt2img", {**T2I, "prompt": "BREAK " * 3000}, "chunks of 75 tokens"),
    # an empty name was taken for "no model": the merge was queued and failed with an IndexError
    ("merge with an empty b", "/opensd/v1/models/merge", {"a": "tiny.safetensors", "b": "", "output": "m"}, "b"),
    # were TypeErrors, plain-text 500s
    ("queue delete a number", "/queue", {"delete": 1}, "delete: expected a list"),
    ("history delete an object", "/history", {"delete": {"a": 1}}, "delete: expected a list"),
    # X/Y/Z plot: every cell was built before the work budget was counted (8,000,000: the server's
    # memory and hours); a 12-item Prompt order was 479,001,600 permutations; text axes had no count cap
    ("X/Y/Z 200 x 200 x 200", "/sdapi/v1/txt2img", xyz(1, "1-200", 4, "1-200", 1, "1-200"), "8,000,000 cells"),
    ("X/Y/Z prompt order of 12", "/sdapi/v1/txt2img", xyz("Prompt order", ",".join("abcdefghijkl")), "479,001,600"),
    ("X/Y/Z 5000 S/R values", "/sdapi/v1/txt2img", xyz("Prompt S/R", ",".join(["x"] * 5000)), "more than 1000"),
    # were plain-text 500s: a count past Python's int digits limit, a range past a float
    ("X/Y/Z 5000-digit count", "/sdapi/v1/txt2img", xyz(1, "1-2 [" + "9" * 5000 + "]"), "a number out of range"),
    ("X/Y/Z 400-digit range", "/sdapi/v1/txt2img", xyz(6, "1-" + "9" * 400 + " [3]"), "out of range"),
    ("X/Y/Z range past a C long", "/sdapi/v1/txt2img", xyz(1, "0-" + "9" * 30), "a number out of range"),
    # were 500s 'VAE decode produced NaN/inf even in fp32; the model is broken' (eta 1e30 overflows float32)
    ("eta past any use", "/sdapi/v1/txt2img", {**T2I, "eta": 1e30, "sampler_name": "Euler a"}, "eta: 1e+30 must be at most"),
    ("s_noise past any use", "/sdapi/v1/txt2img", {**T2I, "s_noise": 1e30, "sampler_name": "Euler"}, "s_noise: 1e+30"),
    # hung for minutes: the short side scaled to 512 px made a 512 x 2,048,000 picture for canny
    ("thin image to detect", "/controlnet/detect",
     {"controlnet_module": "canny", "controlnet_input_images": [png((1, 4000))]}, "controlnet_input_images[0]"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_body_is_refused_naming_the_field(client, case):
    _, path, body, needle = case
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert needle in str(r.json()["detail"]), r.text


def test_a_square_image_to_detect_still_works(client):
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [png((64, 64))],
                                                "controlnet_processor_res": 64})
    assert r.status_code == 200 and len(r.json()["images"]) == 1, r.text


def test_a_binary_websocket_frame_keeps_the_socket(client):
    """ComfyUI ignores what a client sends on /ws; a binary frame raised KeyError in receive_text and
    closed the socket, so the client lost its progress messages."""
    with client.websocket_connect("ws://127.0.0.1:7860/ws?clientId=bin") as ws:
        assert ws.receive_json()["type"] == "status"
        ws.send_bytes(b"\xff" * 100)
        ws.send_text("{not json")
        ws.send_text('{"type": "feature_flags", "data": {}}')
        # the socket is still registered for progress messages after the junk
        assert client.post("/interrupt").status_code == 200
    assert client.get("/queue").status_code == 200


def test_png_info_of_a_huge_parameters_chunk_answers_at_once(client):
    """A PNG whose 'parameters' text is 1,000,000 characters with no colon held the server for hours
    (the infotext key search rescanned the line from every start)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a" * 1_000_000)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 200 and r.json()["info"] == "a" * 1_000_000


# --- JSON and graph sizes (hostile sweep 2) ---------------------------------------------------------

def test_a_body_of_millions_of_tiny_values_is_refused_before_parsing(client):
    """6 MB of '{},' parsed into 2.1 million objects (a 60 MiB body: 21 million, 1.5 GB of memory),
    then walked value by value on the event loop for seconds (a minute at 60 MiB)."""
    from opensd.server.safe_json import MAX_VALUES

    body = b"[" + b"{}," * MAX_VALUES + b"{}]"
    for path in ("/sdapi/v1/txt2img", "/prompt", "/userdata/workflows%2Fbig.json"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, r.text[:200])
        assert f"more than the {MAX_VALUES:,} one request may hold" in r.text, r.text[:200]
    # an image's base64 holds none of ',', '[' or '{': a large one is a handful of values
    from opensd.server.safe_json import loads, value_bound
    assert value_bound(b'{"init_images": ["' + b"A" * 10_000_000 + b'"]}') == 3
    assert loads(b'{"a": [1, 2, {"b": 3}]}') == ({"a": [1, 2, {"b": 3}]}, None)


@pytest.mark.parametrize("value,problem", [
    ({"a": [[[]]]}, None),
    ("\ud800", "body: text holds a lone UTF-16 surrogate"),
    ({"a": [1, {"k\udfff": 2}]}, "body.a.1: a key holds a lone UTF-16 surrogate"),
    ({"a": ["x", "\ud83d"]}, "body.a.1: text holds a lone UTF-16 surrogate"),
    ({"a": "\U0001f600"}, None),  # what json.loads makes of a proper pair of escapes
])
def test_the_fast_json_check_finds_what_the_walk_finds(value, problem):
    from opensd.server.safe_json import problem as find
    found = find(value)
    assert (found is None) if problem is None else found.startswith(problem), found


def test_json_depth_limit_is_exact():
    from opensd.server.safe_json import MAX_DEPTH, problem
    deep = inner = []
    for _ in range(MAX_DEPTH - 1):
        inner.append([])
        inner = inner[0]
    assert problem(deep) is None  # MAX_DEPTH arrays, one in the other
    inner.append({})
    assert "nested deeper than 64 levels" in problem(deep)
    assert "nested deeper" in problem({"a": deep})


def test_a_graph_past_the_node_cap_is_refused(client):
    from opensd.workflows.graph import MAX_NODES

    g = {str(i): {"class_type": "PreviewImage", "inputs": {"images": ["0", 0]}} for i in range(1, MAX_NODES + 1)}
    g["0"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    r = client.post("/prompt", json={"prompt": g})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["message"] == f"Prompt has {MAX_NODES + 1:,} nodes, more than the {MAX_NODES:,} one prompt may hold."


def test_thousands_of_failing_outputs_are_answered_at_once(client):
    """5,000 outputs each on its own failing node: every failed output was compared with every node
    checked so far (about 25 s; 8,000 took 65 s, on the event loop). Now one walk, the same answer."""

    g = {}
    for i in range(4998):
        g[f"e{i}"] = {"class_type": "EmptyImage", "inputs": {"width": -1, "height": 8, "batch_size": 1, "color": 0}}
        g[f"p{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"e{i}", 0]}}
    g["chain0"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}}
    g["chain1"] = {"class_type": "ImageInvert", "inputs": {"image": ["chain0", 0]}}
    g["a"] = {"class_type": "PreviewImage", "inputs": {"images": ["chain1", 0]}}
    g["b"] = {"class_type": "PreviewImage", "inputs": {"images": ["chain1", 0]}}
    start = time.monotonic()
    r = client.post("/prompt", json={"prompt": g})
    assert time.monotonic() - start < 8
    assert r.status_code == 400, r.text[:300]
    errors = r.json()["node_errors"]
    assert errors, r.text[:300]
    assert len(errors) == 4999 and errors["e17"]["dependent_outputs"] == ["p17"]
    assert errors["e17"]["errors"][0]["type"] == "value_smaller_than_min"
    assert errors["chain0"]["dependent_outputs"] == ["a", "b"] and "chain1" not in errors
    assert list(errors)[:3] == ["chain0", "e0", "e1"]  # in the order the nodes were checked


def test_an_uploaded_file_is_never_served_as_a_page(client):
    """A valid PNG carrying a script in a text chunk, uploaded as 'a.html', came back from /view as
    text/html: a page on this origin, able to drive the API with the user's session."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("x", "<script>fetch('/sdapi/v1/options')</script>")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    for name in ("page.html", "page.svg", "page.js", "page.xhtml", "page.css", "page"):
        r = client.post("/upload/image", files={"image": (name, buf.getvalue(), "text/html")})
        assert r.status_code == 200, r.text
        r = client.get("/view", params={"filename": name, "type": "input"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", (name, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff" and "sandbox" in r.headers["content-security-policy"]
        assert r.headers["content-disposition"].startswith("attachment")
    client.post("/upload/image", files={"image": ("shown.png", buf.getvalue(), "image/png")})
    r = client.get("/view", params={"filename": "shown.png", "type": "input"})
    assert r.headers["content-type"] == "image/png" and "content-disposition" not in r.headers


def _slowed(fn, seconds: float):

    def slow(*args, **kwargs):
        time.sleep(seconds)  # stands for a large body's work: it holds whichever thread runs it
        return fn(*args, **kwargs)
    return slow


@pytest.mark.parametrize("where", ["guard json", "graph check", "upload decode", "etn decode"])
def test_a_large_request_does_not_stall_the_others(tmp_path, monkeypatch, where):
    """A request's heavy work (parsing and checking a large JSON body, validating a graph, decoding an
    uploaded image) ran on the event loop, so every other request (progress, /interrupt, the
    websockets) waited for it: 65 s for a graph of 8,000 failing outputs."""
    import threading

    import httpx

    from opensd.server import comfy_api, etn_api, images_io, safe_json
    from server_live import LiveServer

    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    target, name, request = {
        "guard json": (safe_json, "loads", lambda url: httpx.post(url + "/sdapi/v1/png-info", json={"image": ""})),
        "graph check": (comfy_api, "check_prompt", lambda url: httpx.post(url + "/prompt", json={"prompt": graph})),
        "upload decode": (images_io, "decode_bytes", lambda url: httpx.post(
            url + "/upload/image", files={"image": ("a.png", base64.b64decode(png((8, 8))), "image/png")})),
        "etn decode": (etn_api, "decode_bytes", lambda url: httpx.put(url + "/api/etn/image/slow",
                                                                      content=base64.b64decode(png((8, 8))))),
    }[where]
    monkeypatch.setattr(target, name, _slowed(getattr(target, name), 3.0))
    settings = Settings(models_dir=models_dir(tmp_path), outputs_dir=tmp_path / "out", start_worker=False)
    with LiveServer(settings) as server:
        slow = threading.Thread(target=request, args=(server.url,))
        slow.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert httpx.get(server.url + "/internal/ping", timeout=10).status_code == 200
        assert time.monotonic() - start < 1.5
        slow.join()


def test_an_unreadable_image_is_named_without_server_details(client, tmp_path):
    """PIL's message named the file object ('<_io.BytesIO object at 0x7f02e12225c0>') or, for a file,
    the server's absolute path."""
    from opensd.errors import InvalidArgument
    from opensd.image_read import read

    r = client.post("/upload/image", files={"image": ("a.png", b"not an image", "image/png")})
    assert r.status_code == 422 and "0x" not in r.text and "BytesIO" not in r.text, r.text
    assert "image: not a readable image" in r.json()["detail"]
    bad = tmp_path / "secret-folder" / "x.png"
    bad.parent.mkdir()
    bad.write_bytes(b"junk")
    with pytest.raises(InvalidArgument) as e:
        read(bad, "image", 1 << 20)
    assert "secret-folder" not in str(e.value)


def test_a_socket_that_stops_reading_holds_a_bounded_backlog(client):
    """Every preview and progress message for a client that no longer read its socket waited as a
    coroutine holding its bytes, for as long as its jobs ran. Past MAX_BACKLOG its previews and
    progress are dropped; other messages (the end of a prompt) still go, and the backlog drains."""
    import asyncio
    import threading

    from opensd.server.comfy_api import MAX_BACKLOG

    hub = client.app.state.opensd.comfy
    gate = threading.Event()
    sent = []

    class Stuck:
        async def _wait(self, message):
            while not gate.is_set():
                await asyncio.sleep(0.01)
            sent.append(message)

        send_bytes = send_json = _wait

    stuck = Stuck()
    hub.sockets["stuck"] = stuck
    try:
        for i in range(10 * MAX_BACKLOG):
            hub.send("stuck", b"preview" + str(i).encode())
            hub.send("stuck", {"type": "progress", "data": {"value": i}})
        hub.send("stuck", {"type": "executing", "data": {"node": None, "prompt_id": "p"}})
        assert hub._backlog[id(stuck)] == MAX_BACKLOG + 1
        gate.set()
        deadline = time.time() + 10
        while hub._backlog.get(id(stuck)) and time.time() < deadline:
            time.sleep(0.01)
        assert id(stuck) not in hub._backlog and len(sent) == MAX_BACKLOG + 1
        assert [m for m in sent if isinstance(m, dict) and m["type"] == "executing"]
    finally:
        del hub.sockets["stuck"]


def test_client_writes_stop_short_of_a_full_disk(client, monkeypatch):
    """Each upload had its own size cap but nothing bounded how many: a loop of uploads filled the
    disk (then SQLite, the outputs and the OS failed together). Writes a client asks for are refused
    with a 507 once they would leave less than MIN_FREE_BYTES free; reads and small answers go on."""
    from opensd.server import disk_room

    free = {"bytes": disk_room.MIN_FREE_BYTES + 100}
    monkeypatch.setattr(disk_room, "free_bytes", lambda folder: free["bytes"])
    image = base64.b64decode(png((8, 8)))
    assert len(image) < 100
    r = client.post("/upload/image", files={"image": ("fits.png", image, "image/png")})
    assert r.status_code == 200, r.text
    free["bytes"] = disk_room.MIN_FREE_BYTES + 10
    checks = [
        client.post("/upload/image", files={"image": ("full.png", image, "image/png")}),
        client.post("/userdata/workflows%2Ffull.json", content=b'{"a": "' + b"x" * 100 + b'"}',
                    headers={"content-type": "application/json"}),
        client.put("/api/etn/upload/loras/full.safetensors", content=b"x" * 100),
    ]
    client.post("/opensd/v1/datasets", json={"name": "full"})
    checks.append(client.post("/opensd/v1/datasets/full/images", files={"files": ("a.png", image, "image/png")}))
    checks.append(client.post("/opensd/v1/models/convert", json={"source": "tiny.safetensors", "output": "copy"}))
    for r in checks:
        assert r.status_code == 507, (r.request.url, r.text)
        assert "MiB free" in r.text, r.text
    assert client.get("/view", params={"filename": "fits.png", "type": "input"}).status_code == 200


def test_styles_cannot_grow_a_prompt_past_the_encoder_cap(client, tmp_path):
    """A 3,000-word style given 1,000 times built a 15,000,000-character prompt, copied once per
    style (90 s) before the encoder's cap refused it; 100,000 names of a small style took 5 s."""
    from opensd.text.prompt_parser import MAX_PROMPT_CHARS
    from opensd.text.styles import MAX_STYLES, Style, apply_styles

    styles = {"big": Style("big", "{prompt}, " + "word " * 3000, ""), "small": Style("small", "x", "")}
    start = time.monotonic()
    with pytest.raises(InvalidArgument) as e:
        apply_styles("a", "", ["big"] * MAX_STYLES, styles)
    assert time.monotonic() - start < 2
    assert f"with style 'big' applied the prompt holds 255,035 characters, more than the {MAX_PROMPT_CHARS:,}" in str(e.value)
    with pytest.raises(InvalidArgument) as e:
        apply_styles("a", "", ["small"] * 100_000, styles)
    assert str(e.value) == f"styles: 100,000 styles; at most {MAX_STYLES} apply to one prompt"
    assert apply_styles("a", "n", ["small", "big"], styles)[0].startswith("a, x, word")
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "styles": ["nope"] * 200})
    assert r.status_code == 422 and "200 styles; at most 100" in r.text, r.text


# --- discovery sweep 3 (schemathesis and hand-written hostile inputs) --------------------------------

def test_nan_and_infinity_a_request_brings_are_answered_not_500(client):
    """Python's json reads NaN, Infinity and 1e999 (and Python clients write them): a ComfyUI graph
    with a NaN widget value was a plain-text 500 (its node errors echo the value), and a queued
    graph with an infinity in extra_data made every GET /queue a 500 until it ran, /history after."""
    import json

    from server_live import COMFY_GRAPH

    graph = json.loads(json.dumps(COMFY_GRAPH))
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "x",
                                                          "strength_model": float("nan"), "strength_clip": 1.0}}
    raw = {"content-type": "application/json"}
    r = client.post("/prompt", content=json.dumps({"prompt": graph}), headers=raw)
    assert r.status_code == 400, r.text
    errors = r.json()["node_errors"]["10"]["errors"]
    assert any(e["extra_info"].get("input_name") == "strength_model" and e["extra_info"]["received_value"] is None
               for e in errors), errors
    body = {"prompt": COMFY_GRAPH, "extra_data": {"extra_pnginfo": {"workflow": {"a": float("inf"), "b": 1e999}}}}
    r = client.post("/prompt", content=json.dumps(body), headers=raw)
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    queue = client.get("/queue")
    assert queue.status_code == 200, queue.text
    deadline = time.time() + 60
    while pid not in client.get("/history").json() and time.time() < deadline:
        time.sleep(0.1)
    done = client.get(f"/history/{pid}")
    assert done.status_code == 200 and done.json()[pid]["status"]["completed"], done.text[:300]
    assert done.json()[pid]["prompt"][3]["extra_pnginfo"]["workflow"] == {"a": None, "b": None}
    assert client.get("/history").status_code == 200 and client.get("/opensd/v1/jobs").status_code == 200


def test_a_lora_for_another_model_is_a_client_error(client):
    """A LoRA that does not fit the chosen model (a CheckpointError raised while the job loads it) was
    answered 500, as if the server had failed; the request chose it, so it is a 400 naming the file."""
    from server_live import write_lora

    write_lora(client.app.state.opensd.settings.models_dir / "Lora" / "other.safetensors")  # the tiny model's
    client.post("/sdapi/v1/refresh-loras")
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "prompt": "x <lora:other:1>"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "CheckpointError" and "LoRA does not fit" in r.json()["detail"], r.text
    tiny = {**T2I, "prompt": "x <lora:other:1>", "override_settings": {"sd_model_checkpoint": "tiny.safetensors"}}
    assert client.post("/sdapi/v1/txt2img", json=tiny).status_code == 200


def test_damaged_dit_controlnets_keep_the_model_lists_answering(tmp_path):
    """Hostile files: the telltale names of InstantX's Qwen-Image, DiffSynth's blockwise and the Z-Image
    Fun ControlNets over shapes no released file has (1-D where a matrix belongs, a head of width 0) made
    /opensd/v1/models a 500 (IndexError in the catalog); now each is listed as unreadable."""
    import torch

    from opensd.checkpoints.files import save_safetensors
    from opensd.checkpoints.z_image_controlnet_files import TELLTALE
    models = models_dir(tmp_path)
    (models / "ControlNet").mkdir()
    z = "control_layers.0."
    files = {
        "instantx": {"controlnet_blocks.0.weight": (2, 2), "transformer_blocks.0.img_mlp.net.0.proj.weight": (5,),
                     "img_in.weight": (3,), "controlnet_x_embedder.weight": (3,)},
        "blockwise": {"controlnet_blocks.0.y_rms.weight": (2,), "img_in.weight": (7,)},
        "zfun": {TELLTALE: (4, 64), z + "attention.to_q.weight": (2, 2), z + "attention.norm_q.weight": (0,),
                 z + "feed_forward.w1.weight": (3, 3), z + "adaLN_modulation.0.weight": (3, 3)}}
    for name, shapes in files.items():
        save_safetensors({k: torch.zeros(s) for k, s in shapes.items()}, models / "ControlNet" / f"{name}.safetensors")
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as c:
        r = c.get("/opensd/v1/models")
        assert r.status_code == 200, r.text
        listed = {m["name"]: m["detail"] for m in r.json()["controlnet"]}
        for name in files:
            detail = listed[f"{name}.safetensors"]
            assert detail.startswith("unreadable: ") and "damaged" in detail, listed  # a reason, not an IndexError's
            assert "<controlnet>" not in detail and str(tmp_path) not in detail, listed


@pytest.mark.parametrize("family, key", [("flux", "img_in.weight"), ("sd3", "x_embedder.proj.weight"),
                                         ("z_image", "layers.0.attention.q_norm.weight")])
def test_a_network_with_damaged_shapes_is_a_client_error(tmp_path, family, key):
    """Hostile file: a DiT network whose header gives a 1-D tensor (or an empty one) where the family's
    reader takes a matrix (or a width) was a 500 ('not enough values to unpack', 'division by zero')."""
    import torch

    from opensd.checkpoints.files import save_safetensors
    from test_stored_weights import network
    models = models_dir(tmp_path)
    net, metadata = network(family)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()} | {key: torch.zeros(0, 0)}
    save_safetensors(sd, models / "Stable-diffusion" / "damaged.safetensors", metadata)
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as c:
        damaged = {**T2I, "override_settings": {"sd_model_checkpoint": "damaged.safetensors"}}
        r = c.post("/sdapi/v1/txt2img", json=damaged)
        assert r.status_code == 400, r.text
        label = {"flux": "Flux.1", "sd3": "Stable Diffusion 3", "z_image": "Z-Image"}[family]
        assert f"damaged.safetensors: damaged: its tensor shapes are not a {label} model's (" in r.json()["detail"]
        tiny = {**T2I, "override_settings": {"sd_model_checkpoint": "tiny.safetensors"}}
        assert c.post("/sdapi/v1/txt2img", json=tiny).status_code == 200
