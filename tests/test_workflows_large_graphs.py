"""Graph walks (validation, signatures, execution order) use explicit stacks: a graph as long as a
user can send is checked and run, never a RecursionError."""
from __future__ import annotations

import sys

import pytest
from PIL import Image

from opensd.workflows import ExecutionContext, GraphError, OutputCache, execute, validate_prompt

N = 1500  # well past Python's recursion limit of 1000 frames


def chain(n: int, cycle: bool = False) -> dict:
    """LoadImage -> n x ImageScale -> PreviewImage; with cycle, the first scale reads the last one."""
    g = {"0": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}}}
    for i in range(1, n + 1):
        g[str(i)] = {"class_type": "ImageScale", "inputs": {"image": [str(i - 1), 0], "upscale_method": "nearest-exact",
                                                             "width": 8, "height": 8, "crop": "disabled"}}
    if cycle:
        g["1"]["inputs"]["image"] = [str(n), 0]
    g["out"] = {"class_type": "PreviewImage", "inputs": {"images": [str(n), 0]}}
    return g


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long")
    (tmp / "input").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp / "input" / "dot.png")
    return ExecutionContext(folders=None, load_pipeline=None, outputs_dir=tmp / "output", inputs_dir=tmp / "input",
                            temp_dir=tmp / "temp", cache=OutputCache())  # no model: these nodes need none


def test_a_long_linear_chain_validates_and_runs(ctx):
    assert N > sys.getrecursionlimit()
    g = chain(N)
    assert validate_prompt(g, ctx) == {}
    events = []
    out = execute(g, ctx, lambda kind, data: events.append((kind, data)))
    assert out["out"]["images"][0]["type"] == "temp"
    executed = [d["node"] for k, d in events if k == "executing"]
    assert executed == ["0", *map(str, range(1, N + 1)), "out"]  # dependencies first
    again = []
    execute(g, ctx, lambda kind, data: again.append((kind, data)))  # all cached the second time
    assert [d["nodes"] for k, d in again if k == "execution_cached"] == [["out"]]  # the output node is read, its upstream cut off


def test_a_long_cycle_is_reported_not_a_crash(ctx):
    with pytest.raises(GraphError) as e:
        validate_prompt(chain(N, cycle=True), ctx)
    errors = e.value.payload["node_errors"]
    assert any(err["type"] == "dependency_cycle" for node in errors.values() for err in node["errors"])


def test_errors_on_every_node_of_a_long_chain_each_name_their_output(ctx):
    g = chain(N)
    for i in range(1, N + 1):
        g[str(i)]["inputs"]["width"] = -1  # below ImageScale's min of 0
    with pytest.raises(GraphError) as e:
        validate_prompt(g, ctx)
    errors = e.value.payload["node_errors"]
    assert len(errors) == N and all(entry["dependent_outputs"] == ["out"] for entry in errors.values())
