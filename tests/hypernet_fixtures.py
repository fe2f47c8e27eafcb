"""A1111 hypernetwork files written as A1111 writes them (torch.save of its dict), and the MLP they
describe computed by hand, for the hypernetwork tests."""
import torch
import torch.nn.functional as F

# what each activation_func name computes, written out (A1111's "swish" is Hardswish)
ACTS = {"relu": F.relu, "leakyrelu": lambda x: F.leaky_relu(x, 0.01), "elu": F.elu, "swish": F.hardswish,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softsign": lambda x: x / (1 + x.abs()),
        "mish": lambda x: x * torch.tanh(F.softplus(x)), "gelu": F.gelu}


def plan(layer_structure, act, layer_norm, activate_output, dropouts):
    """The nn.Sequential A1111 builds, as (kind, index) steps: 'lin', 'act', 'ln', 'drop'."""
    steps, i = [], 0
    n = len(layer_structure) - 1
    for layer in range(n):
        steps.append(("lin", i))
        i += 1
        if act not in (None, "linear") and (layer < n - 1 or activate_output):
            steps.append(("act", i))
            i += 1
        if layer_norm:
            steps.append(("ln", i))
            i += 1
        if dropouts[layer + 1] > 0:
            steps.append(("drop", i))
            i += 1
    return steps


def random_mlp(dim, layer_structure, steps, g):
    sd, widths = {}, [int(dim * s) for s in layer_structure]
    layer = 0
    for kind, i in steps:
        if kind == "lin":
            sd[f"linear.{i}.weight"] = torch.randn(widths[layer + 1], widths[layer], generator=g) * 0.3
            sd[f"linear.{i}.bias"] = torch.randn(widths[layer + 1], generator=g) * 0.1
            layer += 1
        elif kind == "ln":
            sd[f"linear.{i}.weight"] = 1 + torch.randn(widths[layer], generator=g) * 0.1
            sd[f"linear.{i}.bias"] = torch.randn(widths[layer], generator=g) * 0.1
    return sd


def reference(x, sd, steps, act, strength):
    """x + mlp(x) * strength with the steps written out."""
    h = x.float()
    for kind, i in steps:
        if kind == "lin":
            h = F.linear(h, sd[f"linear.{i}.weight"], sd[f"linear.{i}.bias"])
        elif kind == "act":
            h = ACTS[act](h)
        elif kind == "ln":
            w = sd[f"linear.{i}.weight"]
            h = F.layer_norm(h, w.shape, w, sd[f"linear.{i}.bias"])
    return x.float() + h * strength


def write_hypernet(path, dims, layer_structure=(1, 2, 1), act="relu", layer_norm=False, activate_output=False,
                   use_dropout=False, last_layer_dropout=False, seed=0, dropout_structure=None):
    """An A1111-format file; returns {dim: ((k_sd, v_sd), steps)} for reference()."""
    g = torch.Generator().manual_seed(seed)
    n = len(layer_structure)
    dropouts = dropout_structure or ([0] * n if not use_dropout else
                                     [0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0, 0])
    steps = plan(layer_structure, act, layer_norm, activate_output, dropouts)
    data, out = {}, {}
    for dim in dims:
        pair = (random_mlp(dim, layer_structure, steps, g), random_mlp(dim, layer_structure, steps, g))
        data[dim] = pair
        out[dim] = (pair, steps)
    data.update({"step": 1000, "name": path.stem, "layer_structure": list(layer_structure), "activation_func": act,
                 "is_layer_norm": layer_norm, "weight_initialization": "Normal", "use_dropout": use_dropout,
                 "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5", "activate_output": activate_output,
                 "last_layer_dropout": last_layer_dropout})
    if dropout_structure is not None:
        data["dropout_structure"] = list(dropout_structure)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return out
