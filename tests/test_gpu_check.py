"""bench/gpu_check.py runs only where a GPU is lent, rarely: its every code path (equivalence,
speed, the memory modes, the compiled UNet and pipeline, the JSON and the docs section) runs here
on tiny models on the CPU, so the script is known to work before device time is spent on it."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run_on_tiny_models(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--compile",
           "--no-doc", "--out", str(tmp_path), "--rounds", "1", "--steps", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = res["families"]["SD 1.5, 512x512 (tiny)"]
    assert set(sections) == {"equivalence", "speed", "images", "speed_compiled", "images_compiled"}
    errors = {k: v["error"] for k, v in sections.items() if "error" in v}
    assert not errors, errors
    assert sections["equivalence"]["fp16"]["relative"] < 1e-2
    assert set(sections["speed"]) == {"ours eager", "diffusers eager"}
    assert sections["speed_compiled"]["ours compiled"]["relative_diff_to_eager"] < 1e-4
    for mode in ("medvram", "lowvram"):  # on a CPU the modes run normal; the image must not change
        assert sections["images"][mode]["max_pixel_diff_to_eager"] == 0
    assert sections["images_compiled"]["normal+compile"]["max_pixel_diff_to_eager"] <= 1
    rendered = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--render",
                               str(tmp_path / "gpu_check.json"), "--no-doc"], capture_output=True, text=True)
    assert "| ours compiled |" in rendered.stdout and "| lowvram |" in rendered.stdout


def test_a_later_run_replaces_only_the_sections_it_measured(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check
    run = {"device": "gpu", "torch": "2", "date": "today", "args": "", "steps": 12}
    first = dict(run, families={"SD": {"speed": {"error": "boom"}, "images": {"error": "old"}}})
    second = dict(run, args=" --sections images", sections=["images"], families={"SD": {"images": {
        "normal": {"precision": "fp16", "seconds": 1.0, "sampling_it_s": 42.0, "peak_gib": 0.5}}}})
    res = gpu_check.merged([first, second])
    assert res["families"]["SD"]["speed"] == {"error": "boom"}  # kept from the first run
    text = gpu_check.render(res)
    assert "| normal | 0.50 | 1.00 | 42.0 |" in text and "old" not in text
    assert "Peak VRAM: the most allocated" in text  # the images shown were measured with the baseline
    assert "Peak VRAM" not in gpu_check.render(gpu_check.merged([dict(run, families={"SD": second["families"]["SD"]})]))
