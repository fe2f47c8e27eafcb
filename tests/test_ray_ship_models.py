"""`opensd serve --ray auto --ray-ship-models` on a real local Ray cluster whose two worker nodes have
empty models folders and stores of their own (as two machines would): each model file a job needs
(checkpoint, LoRA, embedding) travels from the front door by its SHA-256 once per node, the images
equal one machine's, a restarted worker fetches nothing again, a file whose bytes do not match its
hash fails the job in one line, and the front door's source serves only what it offered."""
from __future__ import annotations

import copy
import hashlib
import os
import signal
import threading
import time

import httpx
import pytest
import torch
from ray_cluster import local_cluster
from server_live import COMFY_GRAPH, LiveServer, models_dir, write_lora
from test_ray_workers import TIMEOUT, alive, comfy_files, images_of, job_done, prompted, queued, running_on, wait

from opensd.distributed.shipping import ShippedModels
from opensd.errors import InvalidArgument
from opensd.library.hashes import calculate_sha256, default_cache
from opensd.server.settings import Settings
from opensd.server.store import DONE, FAILED

BODY = {"prompt": "a zqword cat <lora:style:0.8>", "steps": 2, "width": 64, "height": 64,
        "override_settings": {"sd_model_checkpoint": "tiny.safetensors"}}


def graph(seed):
    g = copy.deepcopy(COMFY_GRAPH)
    g["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    g["3"]["inputs"]["seed"] = seed
    g["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "style.safetensors",
                                                      "strength_model": 0.8, "strength_clip": 0.8}}
    g["3"]["inputs"]["model"] = ["10", 0]
    g["6"]["inputs"]["clip"] = ["10", 1]
    return g


def embedding(path, model):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(model), "pt") as f:
        width = next(f.get_slice(k).get_shape()[1] for k in f.keys() if k.endswith("token_embedding.weight"))
    save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(0))}, path)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    models = models_dir(root)
    write_lora(models / "Lora" / "style.safetensors")
    (models / "embeddings").mkdir()
    embedding(models / "embeddings" / "zqword.safetensors", models / "Stable-diffusion" / "tiny.safetensors")
    nodes = [root / f"node{i}" for i in range(2)]
    for node in nodes:
        (node / "models").mkdir(parents=True)
    env = [{"OPENSD_CACHE_DIR": str(node / "cache"), "OPENSD_MODELS_DIR": str(node / "models")} for node in nodes]
    with local_cluster(nodes=2, node_env=env) as (ray, cluster):
        settings = Settings(outputs_dir=root / "out", models_dir=models, ray="auto", ray_threads=1,
                            ray_ship_models=True)
        with LiveServer(settings) as live:
            live.nodes, live.ray = nodes, ray
            wait(lambda: len(alive(live)) == 2, "two Ray workers")
            yield live


def fetched(live):
    return live.ray.get(live.state.pool.shipper.source.stats.remote(), timeout=60)


def sha(path):
    return calculate_sha256(path)


def test_each_model_travels_once_per_node_and_makes_one_machines_images(shipped, tmp_path):
    models = shipped.settings.models_dir
    files = {sha(models / "Stable-diffusion" / "tiny.safetensors"): "Stable-diffusion/tiny.safetensors",
             sha(models / "Lora" / "style.safetensors"): "Lora/style.safetensors",
             sha(models / "embeddings" / "zqword.safetensors"): "embeddings/zqword.safetensors"}
    # two of each at once: one on each worker (node)
    jobs = [queued(shipped, {**BODY, "seed": 1 + i}, client=f"s{i}") for i in range(2)]
    graphs = [prompted(shipped, graph(5 + i), f"g{i}") for i in range(2)]
    done = [job_done(shipped, j) for j in jobs + graphs]
    assert [j.status for j in done] == [DONE] * 4, [j.error for j in done]
    # each node ran a job needing all three (a worker busy fetching may leave the other two of its share)
    assert all(w.stats.jobs >= 1 for w in shipped.state.pool.workers)
    assert fetched(shipped) == {h: 2 for h in files}  # once per node
    for node in shipped.nodes:
        store = node / "cache" / "shipped-models"
        assert sorted(p.name for p in (store / "sha256").iterdir() if p.suffix == ".safetensors") == \
            sorted(f"{h}.safetensors" for h in files)
        for h, name in files.items():
            assert (store / "names" / name).samefile(store / "sha256" / f"{h}.safetensors")
        assert list((node / "models").iterdir()) == []  # its own models folder stays as it was
    more = [queued(shipped, {**BODY, "seed": 10 + i}, client=f"m{i}") for i in range(4)]
    assert all(job_done(shipped, j).status == DONE for j in more)
    assert fetched(shipped) == {h: 2 for h in files}  # nothing again

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker runs
    try:
        with LiveServer(Settings(outputs_dir=tmp_path / "one", models_dir=models)) as one:
            for job, body in zip(done, [{**BODY, "seed": 1 + i} for i in range(2)]):
                assert images_of(shipped, job) == images_of(one, job_done(one, queued(one, body)))
            for pid, seed in zip(graphs, (5, 6)):
                assert comfy_files(shipped, pid) == comfy_files(one, job_done(one, prompted(one, graph(seed))).id)
    finally:
        torch.set_num_threads(threads)


def test_a_restarted_worker_finds_the_files_on_its_node(shipped):
    before = fetched(shipped)
    jid = queued(shipped, {**BODY, "steps": 300, "seed": 20})
    worker = running_on(shipped, jid)
    pid = worker.info["pid"]
    os.kill(pid, signal.SIGKILL)
    assert job_done(shipped, jid).status == DONE
    wait(lambda: worker.describe()["alive"] and worker.info["pid"] != pid, "the restarted worker")
    jobs = [queued(shipped, {**BODY, "seed": 30 + i}, client=f"r{i}") for i in range(2)]
    assert all(job_done(shipped, j).status == DONE for j in jobs)
    assert any(j in worker.stats.recent for j in jobs)
    assert fetched(shipped) == before


def test_bytes_that_do_not_match_their_hash_fail_the_job_in_one_line(shipped):
    lora = shipped.settings.models_dir / "Lora" / "rotten.safetensors"
    write_lora(lora)
    data = bytearray(lora.read_bytes())
    data[-1] ^= 1  # not style.safetensors' bytes (which the nodes have)
    lora.write_bytes(bytes(data))
    default_cache().sha256(lora)  # hashed now; then a bit flips, size and time kept
    st = lora.stat()
    data[-2] ^= 1
    lora.write_bytes(bytes(data))
    os.utime(lora, ns=(st.st_atime_ns, st.st_mtime_ns))
    job = job_done(shipped, queued(shipped, {**BODY, "prompt": "a cat <lora:rotten:1>", "seed": 40}))
    assert job.status == FAILED and job.error.startswith("ray-ship-models: loras rotten.safetensors: the bytes")
    assert "\n" not in job.error
    source = shipped.state.pool.shipper.source
    with pytest.raises(shipped.ray.exceptions.RayTaskError, match="no model with SHA-256 000000000000 was offered"):
        shipped.ray.get(source.chunk.remote("0" * 64, 0, 10), timeout=60)


def test_the_workers_of_a_node_fetch_a_file_once(tmp_path):
    """Two workers of one node want the same file at once: one fetches, the other waits and finds it."""
    data = os.urandom(3 * 1000 + 7)
    entry = {"kind": "checkpoints", "name": "sub/m.safetensors", "sha256": hashlib.sha256(data).hexdigest(),
             "size": len(data), "suffix": ".safetensors"}
    calls = []

    def chunks(e):
        calls.append(e["sha256"])
        for i in range(0, len(data), 1000):
            time.sleep(0.05)
            yield data[i:i + 1000]

    stores = [ShippedModels(tmp_path / "store") for _ in range(2)]
    errors = []

    def ensure(store):
        try:
            store.ensure([entry], chunks)
        except Exception as e:  # noqa: BLE001  (a thread's exception would only be a warning)
            errors.append(e)

    threads = [threading.Thread(target=ensure, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(calls) == 1
    assert stores[0].folders().resolve("checkpoints", "sub/m.safetensors").read_bytes() == data
    with pytest.raises(InvalidArgument, match="not a name inside"):
        stores[0].ensure([{**entry, "name": "../../escape.safetensors"}], chunks)
    with pytest.raises(InvalidArgument, match="do not match its SHA-256"):
        stores[0].ensure([{**entry, "sha256": "a" * 64}], chunks)
    assert [p.name for p in (tmp_path / "store" / "sha256").iterdir() if not p.name.endswith(".lock")] == \
        [f"{entry['sha256']}.safetensors"]  # nothing of the bad fetch stays


def test_shipping_models_needs_ray():
    with pytest.raises(InvalidArgument, match="^ray-ship-models: only with --ray"):
        Settings(ray_ship_models=True)
