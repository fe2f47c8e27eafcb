"""Checking an API-format prompt the way ComfyUI's ``POST /prompt`` does, and the graph helpers
the executor needs (what each output depends on, content signatures for the output cache).

A prompt maps node ids to ``{"class_type": str, "inputs": {name: value | [node_id, output_index]},
"_meta": {...}}``. Validation starts from the output nodes (SaveImage, PreviewImage) and walks
their inputs upstream; nodes no output depends on are never looked at, as in ComfyUI. Errors come
back in ComfyUI's shape (types ``required_input_missing``, ``bad_linked_input``,
``return_type_mismatch``, ``invalid_input_type``, ``value_smaller_than_min``,
``value_bigger_than_max``, ``value_not_in_list``, ``custom_validation_failed``,
``exception_during_inner_validation``), so ComfyUI clients show them unchanged; and
``invalid_input_name`` for an input sent to an Autogrow group that is none of its slots, or under a
DynamicCombo that its chosen option does not bring (ComfyUI quietly drops those; a slot past the
last is refused here rather than lost).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from .dynamic_combo import DynamicCombo
from .dynamic_inputs import input_specs, stray_inputs
from .types import NODES, Choices, ExecutionContext, GraphError

def bounding_box(value) -> dict:
    """A BOUNDING_BOX widget's value (ComfyUI V3's {"x", "y", "width", "height"}; a key left out takes
    ComfyUI's default 0, 0, 512, 512): whole numbers, the corner at or right/below 0, the sides 1 or more."""
    if not isinstance(value, dict) or set(value) - {"x", "y", "width", "height"}:
        raise ValueError('expected {"x": ..., "y": ..., "width": ..., "height": ...}')
    box = {"x": 0, "y": 0, "width": 512, "height": 512, **value}
    for key, least in (("x", 0), ("y", 0), ("width", 1), ("height", 1)):
        if isinstance(box[key], bool) or not isinstance(box[key], int) or box[key] < least:
            raise ValueError(f"{key} must be a whole number of at least {least}, not {box[key]!r}")
    return box


# "COMBO" with no list (LoadImageOutput's image, filled by the frontend): taken as sent, for the node's check
# widget kinds a literal may be sent for, and how it is read (WEBCAM: WebcamCapture's uploaded file name)
_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool, "COMBO": lambda value: value,
            "BOUNDING_BOX": bounding_box, "WEBCAM": lambda value: value}
_MISSING = object()
_JSON_KINDS = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}
# Nodes in one prompt. ComfyUI sets none; its largest shared workflows hold a few thousand. Each node
# costs validation, signatures and a history record, so a 64 MiB body of 500,000 nodes is refused.
MAX_NODES = 10_000
# link types any other type may connect to: ComfyUI's "*" (AnyType) and its V3 MatchType (ComfySwitchNode's
# inputs and output, whose type follows what is connected). An input may also list its types, "INT,FLOAT"
# (V3's MultiType).
WILDCARDS = frozenset(("*", "COMFY_MATCHTYPE_V3"))


def _err(kind: str, message: str, details: str, **extra: Any) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _prompt_error(kind: str, message: str, details: str = "") -> GraphError:
    return GraphError(_err(kind, message, details), {})


def _check_shape(prompt: Any) -> list[str]:
    """The output node ids, or GraphError for a prompt that is not a graph of known nodes."""
    if not isinstance(prompt, dict) or not prompt:
        raise _prompt_error("invalid_prompt", "Prompt must be a non-empty object mapping node ids to nodes.")
    if len(prompt) > MAX_NODES:
        raise _prompt_error("invalid_prompt", f"Prompt has {len(prompt):,} nodes, more than the {MAX_NODES:,} "
                                              "one prompt may hold.")
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise _prompt_error("invalid_prompt",
                                "Cannot execute because a node is missing the class_type property.",
                                f"Node ID '#{node_id}'")
        if not isinstance(node.get("inputs", {}), dict):
            raise _prompt_error("invalid_prompt", "Cannot execute because a node's inputs are not an object.",
                                f"Node ID '#{node_id}'")
        node_def = NODES.get(node["class_type"]) if isinstance(node["class_type"], str) else None
        if node_def is None:
            raise _prompt_error("invalid_prompt",
                                f"Cannot execute because node {node['class_type']} does not exist.",
                                f"Node ID '#{node_id}'")
        if node_def.output_node:
            outputs.append(str(node_id))
    if not outputs:
        raise _prompt_error("prompt_no_outputs", "Prompt has no outputs")
    return sorted(outputs, key=_id_key)


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


class _Validator:
    def __init__(self, prompt: dict, ctx: ExecutionContext | None):
        self.prompt = {str(k): v for k, v in prompt.items()}
        self.ctx = ctx
        self.done: dict[str, tuple[bool, list[dict]]] = {}
        self._specs: dict[str, list] = {}
        self.normalized: dict[str, dict] = {}
        self._choices: dict[str, list[str] | None] = {}

    def choices(self, c: Choices) -> list[str] | None:
        if c.source not in self._choices:
            self._choices[c.source] = c.values(self.ctx)
        return self._choices[c.source]

    def node(self, node_id: str) -> tuple[bool, list[dict]]:
        """Validate node_id after everything it links to (without recursion: a chain of any length)."""
        if node_id not in self.done:
            order, closing = walk([node_id], self.upstream, expand=lambda n: n not in self.done)
            for n in closing:  # a node reached again while its own inputs were being walked
                self.done.setdefault(n, (False, [_err("dependency_cycle", "Dependency cycle detected",
                                                      f"Node ID '#{n}'")]))
            for n in order:
                if n not in self.done:
                    self.done[n] = self._validate(n)
        return self.done[node_id]

    def _inputs(self, node_id: str):
        """(name, value, kind, opts, info, required, link) per declared input; link = _link's
        (error, upstream) for a list value, else None (so links are checked once)."""
        if node_id not in self._specs:
            node = self.prompt[node_id]
            inputs, rows = node.get("inputs", {}), []
            for name, spec, required in input_specs(NODES[node["class_type"]], inputs):
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                info = [self.choices(kind) if isinstance(kind, Choices) else
                        kind.keys() if isinstance(kind, DynamicCombo) else kind, opts]
                value = inputs.get(name, _MISSING)
                link = self._link(name, value, kind, info) if isinstance(value, list) else None
                rows.append((name, value, kind, opts, info, required, link))
            self._specs[node_id] = rows
        return self._specs[node_id]

    def upstream(self, node_id: str) -> list[str]:
        """The nodes node_id's well-formed links point to, in input order."""
        return [link[1] for *_, link in self._inputs(node_id) if link is not None and link[0] is None]

    def _validate(self, node_id: str) -> tuple[bool, list[dict]]:
        node = self.prompt[node_id]
        node_def = NODES[node["class_type"]]
        inputs = dict(node.get("inputs", {}))
        errors: list[dict] = []
        valid = True
        linked = set()
        for name, value, kind, opts, info, required, link in self._inputs(node_id):
            if value is None and not required and isinstance(kind, str) and kind not in _CONVERT:
                continue  # an optional link sent as null (Krita does), passed on as None: ComfyUI accepts it
            if value is _MISSING:
                if required:
                    errors.append(_err("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            if link is not None:
                link_error, upstream = link
                if link_error is not None:
                    errors.append(link_error)
                elif not self.done[upstream][0]:
                    valid = False
                inputs[name] = [upstream, value[1]] if link_error is None else value
                linked.add(name)
                continue
            error, value = self._literal(name, value, kind, opts, info)
            if error is not None:
                errors.append(error)
            inputs[name] = value
        for name, message, details in stray_inputs(node_def, inputs):
            errors.append(_err("invalid_input_name", message, details, input_name=name))
        if not errors and node_def.check is not None:  # on the literals: a linked value is known when the node runs
            problem = node_def.check(self.ctx, {k: v for k, v in inputs.items() if k not in linked})
            if problem:
                errors.append(_err("custom_validation_failed", "Custom validation failed for node", problem))
        self.normalized[node_id] = {"class_type": node["class_type"], "inputs": inputs}
        return (valid and not errors, errors)

    def _link(self, name: str, value: list, kind, info) -> tuple[dict | None, str | None]:
        if isinstance(kind, DynamicCombo):  # its value decides which inputs the node has: known now
            return _err("bad_linked_input", "A dynamic combo's choice must be sent as a value, not a link",
                        f"{name}: send one of {', '.join(kind.keys())}", input_name=name, input_config=info,
                        received_value=value), None
        if len(value) != 2:
            return _err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name, input_name=name, input_config=info, received_value=value), None
        upstream, index = str(value[0]), value[1]
        if upstream not in self.prompt:
            return _err("exception_during_inner_validation", "Exception when validating inner node",
                        f"{name}: linked node '{upstream}' does not exist in the prompt",
                        input_name=name, input_config=info, linked_node=value), None
        outputs = NODES[self.prompt[upstream]["class_type"]].outputs
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(outputs):
            return _err("exception_during_inner_validation", "Exception when validating inner node",
                        f"{name}: output index {index!r} out of range, node '{upstream}' "
                        f"({self.prompt[upstream]['class_type']}) has {len(outputs)} outputs",
                        input_name=name, input_config=info, linked_node=value), None
        received = outputs[index]
        expected = kind if isinstance(kind, str) else "COMBO"
        if expected == "COMFY_MATCHTYPE_V3":  # a MatchType limited to some types (BatchImagesMasksLatentsNode's)
            expected = info[1].get("template", {}).get("allowed_types", "*").replace("*", expected)
        if received not in expected.split(",") and not WILDCARDS.intersection((received, expected)):
            return _err("return_type_mismatch", "Return type mismatch between linked nodes",
                        f"{name}, received_type({received}) mismatch input_type({expected})",
                        input_name=name, input_config=info, received_type=received, linked_node=value), None
        return None, upstream

    def _literal(self, name: str, value, kind, opts: dict, info) -> tuple[dict | None, Any]:
        if kind == "*":  # any type: a literal is taken as sent, as ComfyUI does, when it is a JSON scalar
            return _multi_literal(name, value, ",".join(_JSON_KINDS.values()), info), value
        if isinstance(kind, str) and "," in kind and set(kind.split(",")) <= set(_JSON_KINDS.values()):
            return _multi_literal(name, value, kind, info), value
        if isinstance(kind, str) and kind not in _CONVERT:
            return _err("bad_linked_input", f"Input of type {kind} must be a link [node_id, output_index]",
                        name, input_name=name, input_config=info, received_value=value), value
        if isinstance(kind, str):
            try:
                blank = kind in ("INT", "FLOAT") and isinstance(value, str) and not value.strip()
                if (isinstance(value, (dict, list)) and kind != "BOUNDING_BOX") or blank:
                    raise ValueError(f"not a {kind} value")
                converted = _CONVERT[kind](value)
                if kind == "FLOAT" and not math.isfinite(converted):  # "nan" and "inf" convert
                    raise ValueError("not a finite number")
                value = converted  # the error keeps what was sent: a NaN is no JSON
            except (TypeError, ValueError, OverflowError) as e:
                return _err("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                            f"{name}, {value}, {e}", input_name=name, input_config=info, received_value=value,
                            exception_message=str(e)), value
            problem = bound_problem(value, opts)
            if problem == "min":
                return _err("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}",
                            name, input_name=name, input_config=info, received_value=value), value
            if problem == "max":
                return _err("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}",
                            name, input_name=name, input_config=info, received_value=value), value
            return None, value
        if isinstance(kind, Choices) and not kind.strict:
            return None, value
        allowed = self.choices(kind) if isinstance(kind, Choices) else info[0] if isinstance(kind, DynamicCombo) \
            else list(kind)
        if allowed is not None and value not in allowed:
            listed = f"(list of length {len(allowed)})" if len(allowed) > 20 else str(allowed)
            return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                        input_name=name, input_config=None if len(allowed) > 20 else info,
                        received_value=value), value
        return None, value


def _multi_literal(name: str, value, kind: str, info) -> dict | None:
    """A literal sent to an input of several widget types ("FLOAT,INT,BOOLEAN", V3's MultiType): taken
    as sent when its JSON type is one of them (a whole number counts as a FLOAT), as ComfyUI does."""
    allowed = kind.split(",")
    got = _JSON_KINDS.get(type(value))
    fits = got in allowed or (got == "INT" and "FLOAT" in allowed)
    if fits and not (got == "FLOAT" and not math.isfinite(value)):
        return None
    return _err("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}, not one of {kind}", input_name=name, input_config=info, received_value=value,
                exception_message=f"not one of {kind}")


def bound_problem(value, opts: dict) -> str | None:
    """"min" or "max" when a number lies outside an input's declared bounds."""
    if "min" in opts and value < opts["min"]:
        return "min"
    if "max" in opts and value > opts["max"]:
        return "max"
    return None


def linked_number_problem(name: str, value, kind, opts: dict, source: str) -> str | None:
    """What is wrong with a number another node handed an INT/FLOAT input at run time, as one line.
    ComfyUI checks bounds on literals only; a linked value (GetImageSize's width into a batch size)
    must keep them too, or it reaches the node unchecked."""
    if kind not in ("INT", "FLOAT") or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"{name}: {value} from node {source} is not a finite number"
    problem = bound_problem(value, opts)
    if problem == "min":
        return f"{name}: {value} from node {source} is below the input's minimum of {opts['min']}"
    if problem == "max":
        return f"{name}: {value} from node {source} is above the input's maximum of {opts['max']}"
    return None


def check_prompt(prompt: Any, ctx: ExecutionContext | None = None) -> tuple[list[str], dict, dict]:
    """(valid output ids, node_errors, normalized prompt) -- ComfyUI's validate_prompt. Raises
    GraphError when the prompt is malformed or no output is valid. Normalized: every node reached
    from a valid output, with literal inputs converted to their declared type."""
    outputs = _check_shape(prompt)
    v = _Validator(prompt, ctx)
    good, failed, node_errors = [], [], {}
    for out in outputs:
        ok, reasons = v.node(out)
        if ok:
            good.append(out)
        else:
            failed.append((out, reasons))
    for node_id, outs in _failing_upstream(v, [out for out, _ in failed]).items():
        node_errors[node_id] = {"errors": v.done[node_id][1], "dependent_outputs": outs,
                                "class_type": v.prompt[node_id]["class_type"]}
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        raise GraphError(_err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                         node_errors)
    keep = set()
    for out in good:
        keep |= upstream_of(v.normalized, out)
    return good, node_errors, {k: v.normalized[k] for k in keep}


def _failing_upstream(v: _Validator, failed: list[str]) -> dict[str, list[str]]:
    """Each checked node with errors -> the failed outputs at or downstream of it (following
    well-formed links of the raw prompt), nodes in the order they were checked. One walk for all
    the outputs, each node's set of failing nodes above it built once from its inputs' (walking
    from every output again took minutes for thousands of failing outputs)."""
    prompt = v.prompt

    def linked(n: str) -> list[str]:
        return [str(x[0]) for x in prompt[n].get("inputs", {}).values()
                if isinstance(x, list) and len(x) == 2 and str(x[0]) in prompt]

    above: dict[str, frozenset] = {}
    for n in walk(failed, linked)[0]:  # each node after those it links to (a cycle's nodes: what is known)
        ok, errs = v.done.get(n, (True, []))
        sets = {id(s): s for u in linked(n) if (s := above.get(u))}
        merged = next(iter(sets.values())) if len(sets) == 1 else frozenset().union(*sets.values())
        above[n] = merged | {n} if not ok and errs else merged
    order = {node_id: i for i, node_id in enumerate(v.done)}
    out: dict[str, list[str]] = {}
    for node_id in sorted({n for o in failed for n in above[o]}, key=order.__getitem__):
        out[node_id] = []
    for o in failed:
        for node_id in above[o]:
            out[node_id].append(o)
    return out


def upstream_of(prompt: dict, node_id: str) -> set[str]:
    """node_id and every node it depends on."""
    return set(walk([node_id], lambda n: links(prompt, n))[0])


def signatures(prompt: dict, ctx: ExecutionContext) -> dict[str, str]:
    """A content hash per node: its type, literal inputs, outside-world fingerprint and the
    signatures of what it is linked to. Equal signature = equal outputs (the cache key)."""
    sigs: dict[str, str] = {}
    order, _ = walk(list(prompt), lambda n: links(prompt, n))
    for node_id in order:
        node = prompt[node_id]
        node_def = NODES[node["class_type"]]
        parts: dict[str, Any] = {}
        for name, value in sorted(node["inputs"].items()):
            parts[name] = ["link", sigs[str(value[0])], value[1]] if isinstance(value, list) else value
        extra = node_def.fingerprint(ctx, node["inputs"]) if node_def.fingerprint else None
        blob = json.dumps([node["class_type"], parts, extra], sort_keys=True, default=repr)
        sigs[node_id] = hashlib.sha256(blob.encode()).hexdigest()
    return sigs


def links(prompt: dict, node_id: str) -> list[str]:
    """The nodes a normalized prompt's node_id is linked to, in input order."""
    return [str(v[0]) for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]


def walk(starts, upstream, expand=lambda node_id: True, preorder: list | None = None):
    """Depth-first from each start through `upstream(node)` (skipped where `expand(node)` is false),
    with an explicit stack so graphs of any size are walked. Returns (every node reached, each after
    the nodes it depends on; the nodes found again while still open: they close a cycle). The
    order nodes were first reached in goes to `preorder` when given."""
    state: dict[str, bool] = {}  # False while open, True once done
    order, closing = [], []
    for start in starts:
        if start in state:
            continue
        state[start] = False
        if preorder is not None:
            preorder.append(start)
        stack = [(start, iter(upstream(start) if expand(start) else ()))]
        while stack:
            node_id, pending = stack[-1]
            for nxt in pending:
                if nxt not in state:
                    state[nxt] = False
                    if preorder is not None:
                        preorder.append(nxt)
                    stack.append((nxt, iter(upstream(nxt) if expand(nxt) else ())))
                    break
                if state[nxt] is False:
                    closing.append(nxt)
            else:
                stack.pop()
                state[node_id] = True
                order.append(node_id)
    return order, closing
