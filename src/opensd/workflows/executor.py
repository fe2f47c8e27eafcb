"""Running a validated prompt: nodes in dependency order, outputs cached by content signature.

Events, as ComfyUI sends them over its websocket (``on_event(kind, data)``):

* ``("execution_cached", {"nodes": [...]})`` once, first: the nodes whose outputs are reused;
* per node run: ``("executing", {"node": id})``, then any ``("progress", {"value", "max", "node"})``
  and ``("preview", PIL.Image)``, then ``("executed", {"node": id, "output": ui})`` for nodes with UI
  output (also sent for cached output nodes, as ComfyUI does).

The caller (the server) sends ``execution_start``/``execution_success``/``executing None`` itself.
A node that raises becomes :class:`NodeError` (ComfyUI's ``execution_error`` fields);
``ctx.should_stop()`` turning true raises :class:`Interrupted` between nodes or within one
sampling step, with ``.node_id`` set.
"""
from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

import torch

from ..errors import InvalidArgument
from ..pipeline.pipeline import Interrupted
from .dynamic_inputs import input_specs, nest
from .graph import check_prompt, linked_number_problem, links, signatures, walk
from .loras import release_all
from . import types
from .types import NODES, ExecutionContext, GraphError, ListOutput, NodeCall, NodeError

Event = Callable[[str, object], None]


class OutputCache:
    """Node outputs by signature, reused across runs. After each run only the entries that run
    used are kept (ComfyUI's default: the last prompt's outputs stay in memory)."""

    def __init__(self):
        self._entries: dict[str, tuple[tuple, dict | None]] = {}
        self.lock = threading.Lock()

    def get(self, sig: str):
        return self._entries.get(sig)

    def put(self, sig: str, outputs: tuple, ui: dict | None) -> None:
        self._entries[sig] = (outputs, ui)

    def keep_only(self, sigs) -> None:
        keep = set(sigs)
        for sig in [s for s in self._entries if s not in keep]:
            del self._entries[sig]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def validate_prompt(prompt: dict, ctx: ExecutionContext | None = None) -> dict:
    """Raise GraphError (``err.payload`` = ComfyUI's 400 body) unless at least one output node is
    valid. Returns ``node_errors`` for the outputs that are invalid and will be skipped (ComfyUI
    still queues such a prompt). Pass ``ctx`` to check model and image names against its folders."""
    _, node_errors, _ = check_prompt(prompt, ctx)
    return node_errors


def execute(prompt: dict, ctx: ExecutionContext, on_event: Event | None = None) -> dict[str, dict]:
    """Validate and run ``prompt``; return ``{node_id: ui_output}`` for output nodes with UI output."""
    emit = on_event or (lambda kind, data: None)
    outputs, _, graph = check_prompt(prompt, ctx)
    cache = ctx.cache if ctx.cache is not None else OutputCache()
    with cache.lock:
        try:
            return _run(graph, outputs, ctx, cache, emit, prompt)
        finally:
            release_all()


def _run(graph: dict, outputs: list[str], ctx: ExecutionContext, cache: OutputCache, emit: Event,
         original: dict) -> dict[str, dict]:
    sigs = signatures(graph, ctx)
    have = {s for s in sigs.values() if cache.get(s) is not None}
    # Dependencies first; a node whose output is cached is read, and cuts off its upstream.
    reached: list[str] = []
    order, _ = walk(outputs, lambda n: links(graph, n), expand=lambda n: sigs[n] not in have, preorder=reached)
    to_run = [n for n in order if sigs[n] not in have]
    cached = [n for n in reached if sigs[n] in have]
    emit("execution_cached", {"nodes": cached})
    results: dict[str, tuple] = {}
    ui_out: dict[str, dict] = {}
    executed: list[str] = []
    held = _Held()
    for node_id in cached:
        outs, ui = cache.get(sigs[node_id])
        held.add(outs)
        results[node_id] = outs
        if ui:
            ui_out[node_id] = ui
            emit("executed", {"node": node_id, "output": ui})
    with torch.no_grad():  # not inference_mode: the pipelines' cached tensors are shared with other faces
        for node_id in to_run:
            if ctx.should_stop():
                raise _interrupted(node_id)
            node = graph[node_id]
            node_def = NODES[node["class_type"]]
            declared = _declared(node_def, node["inputs"])
            kwargs = {name: results[value[0]][value[1]] if isinstance(value, list) else value
                      for name, value in node["inputs"].items() if name in declared}
            for name, what in node_def.hidden.items():
                kwargs[name] = {"PROMPT": original, "EXTRA_PNGINFO": ctx.extra_pnginfo,
                                "UNIQUE_ID": node_id}.get(what)
            emit("executing", {"node": node_id})
            call = NodeCall(ctx, node_id, original, emit)
            rets = []
            try:
                for each in _calls(node_def, kwargs):
                    _check_linked_numbers(declared, node["inputs"], each)
                    rets.append(node_def.fn(call, **nest(node_def, each)))
            except Interrupted as e:
                e.node_id = node_id
                raise
            except GraphError:
                raise
            except Exception as e:
                raise NodeError(node_id, node["class_type"], _readable(e), list(executed),
                                traceback.format_tb(e.__traceback__)) from e
            outs, ui = _merged(node_def, rets, mapped=len(rets) != 1 or _listed(node_def, kwargs))
            if held.add(outs) > types.MAX_GRAPH_ELEMENTS:
                problem = InvalidArgument(f"the graph's node outputs would hold {held.count:,} values together, more "
                                          f"than the {types.MAX_GRAPH_ELEMENTS:,} one graph may; ask for fewer or "
                                          "smaller images")
                raise NodeError(node_id, node["class_type"], problem, list(executed), [])
            results[node_id] = tuple(outs)
            cache.put(sigs[node_id], tuple(outs), ui)
            executed.append(node_id)
            if ui:
                ui_out[node_id] = ui
                emit("executed", {"node": node_id, "output": ui})
    cache.keep_only(sigs.values())  # the whole graph's outputs stay, as in ComfyUI
    return {n: ui_out[n] for n in outputs if n in ui_out}


def _listed(node_def, kwargs: dict) -> bool:
    return not node_def.input_is_list and any(isinstance(v, ListOutput) for v in kwargs.values())


def _calls(node_def, kwargs: dict) -> list[dict]:
    """The keyword sets a node is called with (ComfyUI's list mapping): an INPUT_IS_LIST node once
    with every declared input as a list; a node given lists once per item of the longest (shorter
    lists repeat their last item, single values stay); otherwise once as given."""
    declared = _declared(node_def, kwargs)
    if node_def.input_is_list:
        return [{k: (list(v) if isinstance(v, ListOutput) else [v]) if k in declared else v
                 for k, v in kwargs.items()}]
    lists = {k: v for k, v in kwargs.items() if isinstance(v, ListOutput)}
    if not lists:
        return [kwargs]
    empty = [k for k, v in lists.items() if not v]
    if empty:
        raise InvalidArgument(f"{empty[0]}: the list of values it was given is empty")
    return [{k: (v[min(i, len(v) - 1)] if k in lists else v) for k, v in kwargs.items()}
            for i in range(max(len(v) for v in lists.values()))]


def _merged(node_def, rets: list, mapped: bool) -> tuple[tuple, dict | None]:
    """(outputs, ui) of a node's calls: a list output's lists joined, and when the node was mapped
    over a list every output a ListOutput of the calls' values; the UI lists joined."""
    outs_each, uis = [], []
    for ret in rets:
        outs, ui = (ret.get("result", ()), ret.get("ui")) if isinstance(ret, dict) else (tuple(ret), None)
        outs_each.append(tuple(outs))
        uis.append(ui)
    flags = node_def.output_is_list or (False,) * len(node_def.outputs)
    if not mapped and len(rets) == 1:
        outs = tuple(ListOutput(o) if flag else o for o, flag in zip(outs_each[0], flags))
        return outs + outs_each[0][len(flags):], uis[0]
    merged = []
    for slot, flag in enumerate(flags):
        values = [o[slot] for o in outs_each]
        merged.append(ListOutput(v for value in values for v in value) if flag else ListOutput(values))
    ui: dict = {}
    for part in uis:
        for key, value in (part or {}).items():
            ui[key] = ui.get(key, []) + list(value) if isinstance(value, (list, tuple)) else value
    return tuple(merged), ui or None


class _Held:
    """The tensor values a run's node outputs hold, each storage counted once (views and outputs
    passed on unchanged share theirs)."""

    def __init__(self):
        self.count, self._seen, self._walked = 0, set(), set()

    def add(self, outputs) -> int:
        stack = [outputs]
        while stack:
            value = stack.pop()
            if isinstance(value, (list, tuple, dict)):
                if id(value) in self._walked:
                    continue
                self._walked.add(id(value))
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                if storage.data_ptr() not in self._seen:
                    self._seen.add(storage.data_ptr())
                    self.count += storage.nbytes() // value.element_size()
            elif isinstance(value, (list, tuple)):
                stack.extend(value)
            elif isinstance(value, dict):
                stack.extend(value.values())
        return self.count


def _declared(node_def, inputs: dict) -> dict:
    """Input name -> spec for every input the node takes given its `inputs`: an Autogrow group's
    slots one by one, a DynamicCombo's chosen option's inputs by path."""
    return {name: spec for name, spec, _ in input_specs(node_def, inputs)}


def _check_linked_numbers(specs: dict, inputs: dict, kwargs: dict) -> None:
    """The bounds validation checked on literals, for the numbers that came through links."""
    for name, value in inputs.items():
        if isinstance(value, list) and name in specs:
            spec = specs[name]
            problem = linked_number_problem(name, kwargs[name], spec[0], spec[1] if len(spec) > 1 else {}, value[0])
            if problem:
                raise InvalidArgument(problem)


def _readable(e: Exception) -> Exception:
    """An allocator's failure (a page of C++ context) as one line; other errors as they are."""
    text = str(e)
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in text
                                                                       or "out of memory" in text.lower())):
        return MemoryError("out of memory: this node needs more memory than is free; ask for fewer or "
                           "smaller images")
    return e


def _interrupted(node_id: str) -> Interrupted:
    e = Interrupted("generation interrupted")
    e.node_id = node_id
    return e
