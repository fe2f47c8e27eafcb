"""The CLI and the A1111 API build an image's infotext in one place: the same generation gets the
same text from both faces."""
import json

from fastapi.testclient import TestClient
from server_live import BASE, models_dir

from opensd.cli import main
from opensd.pipeline.infotext import read_infotext
from opensd.server.app import create_app
from opensd.server.settings import Settings


def test_cli_and_a1111_api_write_the_same_infotext(tmp_path):
    models = models_dir(tmp_path)
    out = tmp_path / "cli.png"
    assert main(["generate", "a red apple", "-m", str(models / "Stable-diffusion" / "tiny.safetensors"),
                 "--negative", "blurry", "--steps", "2", "--seed", "3", "--cfg", "6", "--hires",
                 "--hires-scale", "1.5", "--hires-steps", "1", "--hires-denoise", "0.6",
                 "--hires-prompt", "a blue pear", "--hires-sampler", "Euler a", "-o", str(out)]) == 0
    request = {"prompt": "a red apple", "negative_prompt": "blurry", "steps": 2, "seed": 3, "cfg_scale": 6,
               "width": 64, "height": 64, "sampler_name": "Euler", "enable_hr": True, "hr_scale": 1.5,
               "hr_second_pass_steps": 1, "denoising_strength": 0.6, "hr_upscaler": "Latent",
               "hr_prompt": "a blue pear", "hr_sampler_name": "Euler a",
               "override_settings": {"sd_model_checkpoint": "tiny.safetensors"}}
    settings = Settings(models_dir=models, outputs_dir=tmp_path / "out")
    with TestClient(create_app(settings), base_url=BASE) as client:
        r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    api_text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Hires prompt: a blue pear" in api_text and "Hires sampler: Euler a" in api_text
    assert api_text == read_infotext(out)
