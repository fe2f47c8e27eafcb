"""`opensd upscale`: a model by path or by name in --models-dir, tiled or whole, Lanczos, and every
mistake as one line naming its flag."""
import pytest
from PIL import Image
from upscaler_files import rrdbnet, srvgg, write_pth, write_safetensors

from opensd.cli import main
from opensd.pipeline.infotext import read_infotext, save_image


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("upcli")
    write_pth(root / "models" / "ESRGAN" / "4x_tiny.pth", rrdbnet(), "params_ema")
    write_safetensors(root / "models" / "upscale_models" / "2x-compact.safetensors", srvgg(scale=2))
    save_image(Image.new("RGB", (20, 16), (200, 100, 50)), root / "in.png", "a fox\nSteps: 2, Seed: 5")
    Image.new("RGB", (10, 6), (10, 20, 30)).save(root / "b.png")
    return root


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_a_model_by_path_in_tiles(root):
    out = root / "out" / "a.png"
    assert main(["upscale", str(root / "in.png"), "-o", str(out), "--model", str(root / "models/ESRGAN/4x_tiny.pth"),
                 "--tile", "8", "--tile-overlap", "2"]) == 0
    assert _size(out) == (80, 64)                       # the model's own 4x by default
    assert read_infotext(out) == "a fox\nSteps: 2, Seed: 5"  # the input's parameters stay with it


def test_a_model_by_name_at_another_scale(root):
    out = root / "out" / "b.webp"
    assert main(["upscale", str(root / "in.png"), "-o", str(out), "-m", "4x_tiny", "--scale", "1.5",
                 "--models-dir", str(root / "models")]) == 0
    assert _size(out) == (30, 24)


def test_several_inputs_into_a_folder_with_lanczos(root):
    folder = root / "many"
    assert main(["upscale", str(root / "in.png"), str(root / "b.png"), "-o", str(folder), "-m", "lanczos",
                 "--scale", "3"]) == 0
    assert _size(folder / "in.png") == (60, 48) and _size(folder / "b.png") == (30, 18)


@pytest.mark.parametrize("argv,message", [
    (["-m", "4x_tiny"], "model: no upscaler named '4x_tiny' (available: None, Lanczos, Nearest); "
                        "give a model file's path, or a models folder to find it in"),
    (["-m", "2x", "--models-dir", "{root}/models"], "model: no upscaler named '2x'"),
    (["-m", "lanczos", "--scale", "40"], "scale: 40.0 is outside 1..16"),
    (["-m", "lanczos", "-o", "{root}/x.gif"], "output: 'x.gif' is not a supported format"),
    (["-m", "{root}/b.png"], "b.png: not a weight file we can read"),
    (["-m", "lanczos", "--tile", "8", "--tile-overlap", "8"], "tile overlap: 8 must be at least 0 and less than"),
])
def test_mistakes_are_one_line(root, capsys, argv, message):
    argv = [a.replace("{root}", str(root)) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(root / "err.png")]
    assert main(["upscale", str(root / "in.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_generate_hires_fix_with_an_upscaler_model_file(root):
    from opensd.pipeline.infotext import parse_infotext

    out = root / "hires.png"
    model = str(root / "models" / "upscale_models" / "2x-compact.safetensors")
    assert main(["generate", "a red apple", "--steps", "1", "--seed", "3", "--width", "64", "--height", "64",
                 "--hires", "--hires-scale", "1.5", "--hires-steps", "1", "--hires-upscaler", model,
                 "-o", str(out)]) == 0
    assert _size(out) == (96, 96)
    assert parse_infotext(read_infotext(out))[2]["Hires upscaler"] == "2x-compact"


def test_generate_names_an_unknown_hires_upscaler(root, capsys):
    assert main(["generate", "a red apple", "--steps", "1", "--hires", "--hires-upscaler", "R-ESRGAN 4x+",
                 "-o", str(root / "x.png")]) == 2
    assert "hires-upscaler: no upscaler named 'R-ESRGAN 4x+'" in capsys.readouterr().err
