"""Reduced-precision OpenVINO for the AVX2-only CPU target of issue 21: NNCF int8 variants of our
converted SD 1.5 UNet (pipeline/openvino_unet.py) against diffusers' eager fp32 step, and what they
cost in image quality on the trained built-in model. An experiment: none of it is product code.

    python bench/openvino_int8.py [--rounds 3] [--variants wc_asym conv8 ptq]
    python bench/openvino_int8.py --quality [--variants wc_asym wc_sym conv8 hybrid ptq]

Variants (each made from the fp32 conversion in ~/.cache/opensd/openvino/<key>/ and saved next to
it as unet-<variant>.xml; the first run converts and quantizes, minutes each):
  wc_asym, wc_sym  nncf.compress_weights INT8_ASYM / INT8_SYM: int8 weights, activations left to the
                   CPU plugin (compiled with DYNAMIC_QUANTIZATION_GROUP_SIZE=32: int8 activations
                   where the plugin can)
  conv8            nncf.quantize with MatMul and ScaledDotProductAttention ignored: the convolutions'
                   activations and weights int8, the linears and the attention fp32
  hybrid           conv8 plus the linears' weights compressed INT8_ASYM (the scheme optimum-intel
                   applies to SD UNets)
  ptq              nncf.quantize of everything it quantizes by default (model type transformer)

Timing (random weights at full size, the fp32 step bench/unet_step.py measures): all variants in
one process, interleaved round by round with diffusers' eager fp32, wall and CPU (process) time
ratios. Calibration there is 3 random UNet inputs: what it decides cannot change the arithmetic,
only the scales. --quality: the built-in model's 20-step 64x64 images through OpenVINO fp32 and each
variant (8 prompts x 2 seeds), PSNR to both fp32 images; calibration = the UNet inputs of 60 real
sampling steps of other prompts and a seed not among the evaluated ones.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_speed as E  # noqa: E402  (puts src/ and tests/ on sys.path)

VARIANTS = ("wc_asym", "wc_sym", "conv8", "hybrid", "ptq")
PROMPTS = ("red heart", "smiling face", "thumbs up", "yellow star", "cat face", "fire", "blue circle",
           "crying face")
CALIBRATION_PROMPTS = ("green apple", "sad face, noto emoji style", "dog face", "rocket", "purple heart",
                       "sun with face")
SEEDS = (1, 2)


def compile_config(variant: str | None) -> dict:
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}
    if variant in ("wc_asym", "wc_sym"):
        cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 32
    return cfg


def transform(model, variant: str, calibration: list):
    """`model` (an openvino.Model) made `variant` by NNCF."""
    import nncf

    wc = nncf.CompressWeightsMode
    if variant in ("wc_asym", "wc_sym"):
        return nncf.compress_weights(model, mode=wc.INT8_ASYM if variant == "wc_asym" else wc.INT8_SYM)
    data = nncf.Dataset(calibration)
    quick = nncf.AdvancedQuantizationParameters(disable_bias_correction=True)
    if variant == "ptq":
        return nncf.quantize(model, data, subset_size=len(calibration), advanced_parameters=quick,
                             model_type=nncf.ModelType.TRANSFORMER)
    if variant == "hybrid":
        model = nncf.compress_weights(model, mode=wc.INT8_ASYM, ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    return nncf.quantize(model, data, subset_size=len(calibration), advanced_parameters=quick,
                         ignored_scope=nncf.IgnoredScope(types=["MatMul", "ScaledDotProductAttention"],
                                                         validate=False))


def variant_xml(core, fp32_xml: Path, variant: str, calibration: list) -> Path:
    import openvino as ov

    out = fp32_xml.with_name(f"unet-{variant}.xml")
    if not out.is_file():
        t0 = time.perf_counter()
        ov.save_model(transform(core.read_model(fp32_xml), variant, calibration), out, compress_to_fp16=False)
        print(f"{variant}: made in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def timing(args) -> None:
    import numpy as np
    import torch
    from opensd.pipeline.openvino_unet import OpenVINOUNet

    x, t, ctx = E._inputs("unet", torch.float32)
    arrays = [x.numpy(), t.float().numpy(), ctx.numpy()]
    ours = E._build("ours", "unet", torch.float32).to(memory_format=torch.channels_last)
    runner = OpenVINOUNet(ours, bf16=False, threads=2)
    with torch.inference_mode():
        runner(x, t, ctx)  # converts into the cache (or finds the conversion there)
    fp32_xml = runner._saved(arrays)
    del runner, ours
    rng = np.random.default_rng(0)
    calibration = [[rng.standard_normal((2, 4, 64, 64)).astype(np.float32) * s, np.array([ts, ts], np.float32),
                    rng.standard_normal((2, 77, 768)).astype(np.float32)] for s, ts in ((1., 900.), (.5, 500.), (.2, 100.))]
    import openvino as ov
    core = ov.Core()
    steps = {}
    for variant in [None, *args.variants]:
        xml = fp32_xml if variant is None else variant_xml(core, fp32_xml, variant, calibration)
        model = core.read_model(xml)
        model.reshape({p: ov.PartialShape(list(a.shape)) for p, a in zip(model.inputs, arrays)})
        request = core.compile_model(model, "CPU", compile_config(variant)).create_infer_request()
        steps[f"openvino {variant or 'fp32'}"] = (lambda r=request: r.infer(arrays)[0].copy())
    diffusers = E._build("diffusers", "unet", torch.float32)
    steps = {"diffusers fp32": E._step_fn("diffusers", "unet", diffusers, (x, t, ctx)), **steps}
    with torch.inference_mode():
        outputs = {}
        for n, fn in steps.items():  # also the warm-up
            out = fn()
            outputs[n] = out.float().numpy() if torch.is_tensor(out) else out
        wall, cpu = {n: [] for n in steps}, {n: [] for n in steps}
        loads = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for n in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                steps[n]()
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: " + ", ".join(f"{n} {wall[n][-1]:.2f}/{cpu[n][-1]:.2f}" for n in steps), flush=True)
    ref = outputs["diffusers fp32"]
    print("\n| variant | wall s (median) | / diffusers fp32 | CPU s (median) | CPU / diffusers fp32 | "
          "max abs diff to diffusers fp32 (of max abs) |\n|---|---:|---:|---:|---:|---|")
    for n in steps:
        ratio = {k: statistics.median(a / b for a, b in zip(v[n], v["diffusers fp32"])) for k, v in
                 (("wall", wall), ("cpu", cpu))}
        print(f"| {n} | {statistics.median(wall[n]):.2f} | {ratio['wall']:.3f} | {statistics.median(cpu[n]):.2f} | "
              f"{ratio['cpu']:.3f} | {np.abs(outputs[n] - ref).max():.2e} ({np.abs(ref).max():.2f}) |")
    print(f"\n1-min load before and after each round: {', '.join(f'{v:.1f}' for v in loads)}")


def quality(args) -> None:
    import numpy as np
    import torch
    from opensd.library.models_dir import BUILTIN_CHECKPOINT
    from opensd.pipeline import openvino_unet as O
    from opensd.pipeline.pipeline import load

    class Variant(O.OpenVINOUNet):
        """The runner reading unet-<variant>.xml instead of the fp32 conversion."""
        variant, calibration, captured = None, None, None

        def __call__(self, x, timesteps, context, y=None, control=None):
            if self.captured is not None:
                self.captured.append([a.detach().float().numpy().copy() for a in
                                      [x, timesteps.expand(x.shape[0]), context] + ([] if y is None else [y])])
            return super().__call__(x, timesteps, context, y, control)

        def _saved(self, arrays):
            xml = super()._saved(arrays)
            return xml if self.variant is None else variant_xml(self.core, xml, self.variant, self.calibration)

    def pipeline(variant=None, calibration=None):
        pipe = load(BUILTIN_CHECKPOINT, device="cpu", precision="fp32")
        network = pipe.family.network(pipe.model)
        runner = Variant(network, bf16=False)
        runner.config.update(compile_config(variant))
        runner.variant, runner.calibration = variant, calibration
        network._compiled_call_impl = runner
        return pipe, runner

    def images(pipe, prompts=PROMPTS, seeds=SEEDS):
        return [np.asarray(pipe.txt2img(p, steps=20, seed=s)[0]).astype(np.float64) for p in prompts for s in seeds]

    def psnr(a, b):
        mse = statistics.mean(float(((u - v) ** 2).mean()) for u, v in zip(a, b))
        return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)

    torch_fp32 = images(load(BUILTIN_CHECKPOINT, device="cpu", precision="fp32"))
    pipe, runner = pipeline()
    runner.captured = []
    images(pipe, CALIBRATION_PROMPTS, (7,))
    calibration, runner.captured = runner.captured[::2], None
    ov_fp32 = images(pipe)
    print(f"calibration: {len(calibration)} UNet inputs from 20-step sampling of {len(CALIBRATION_PROMPTS)} prompts")
    print("\n| variant | PSNR to OpenVINO fp32 (dB) | PSNR to PyTorch fp32 (dB) | worst image PSNR to OpenVINO fp32 | "
          "mean abs pixel diff (0-255) |\n|---|---:|---:|---:|---:|")
    print(f"| openvino fp32 | inf | {psnr(ov_fp32, torch_fp32):.1f} | inf | 0 |")
    for variant in args.variants:
        got = images(pipeline(variant, calibration)[0])
        worst = min(psnr([a], [b]) for a, b in zip(got, ov_fp32))
        diff = statistics.mean(float(np.abs(a - b).mean()) for a, b in zip(got, ov_fp32))
        print(f"| {variant} | {psnr(got, ov_fp32):.1f} | {psnr(got, torch_fp32):.1f} | {worst:.1f} | {diff:.2f} |",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=None)
    ap.add_argument("--quality", action="store_true", help="image quality on the built-in model instead of timing")
    args = ap.parse_args()
    sys.modules.setdefault("openvino_telemetry", None)  # as pipeline/openvino_unet.py: no usage reports
    if args.variants is None:
        args.variants = list(VARIANTS) if args.quality else ["wc_asym", "conv8", "ptq"]
    (quality if args.quality else timing)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
