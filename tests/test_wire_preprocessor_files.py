"""A ControlNet unit whose preprocessor runs several model files (OpenPose with hands and face,
DWPose: a {"body", "hand", ...} dict) crosses to a remote worker by names and ships every file."""
from types import SimpleNamespace

from opensd.distributed import shipping, wire
from opensd.library.models_dir import ModelFolders


def test_a_dict_of_preprocessor_files_crosses_the_wire_and_ships_each(tmp_path):
    folders = ModelFolders(tmp_path)
    (tmp_path / "ControlNet").mkdir()
    cn = tmp_path / "ControlNet" / "control_openpose.safetensors"
    cn.write_bytes(b"")
    pre = tmp_path / "ControlNetPreprocessor" / "openpose"
    pre.mkdir(parents=True)
    files = {k: pre / f"{k}_pose_model.pth" for k in ("body", "hand")}
    for f in files.values():
        f.write_bytes(b"")
    unit = {"index": 0, "path": str(cn), "module": "openpose_hand",
            "weights": {**{k: str(v) for k, v in files.items()}, "face": None}}
    sent = wire._unit_to_wire(folders, unit)
    assert sent["weights"] == {"body": "openpose/body_pose_model.pth", "hand": "openpose/hand_pose_model.pth",
                               "face": None}
    back = wire._unit_from_wire(folders, sent)["weights"]
    assert back == {"body": str(files["body"].resolve()), "hand": str(files["hand"].resolve()), "face": None}
    state = SimpleNamespace(folders=folders)
    payload = {"model_path": str(tmp_path / "m.safetensors"), "controlnet": [unit], "kwargs": {}}
    shipped = shipping.a1111_files(state, payload)
    assert ("preprocessors", files["body"]) in shipped and ("preprocessors", files["hand"]) in shipped
