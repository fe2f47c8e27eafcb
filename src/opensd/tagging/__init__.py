"""Image interrogation: a picture in, prompt tags out. wd14.py finds and runs SmilingWolf's WD14 taggers
(ONNX, through onnxruntime), deepdanbooru.py DeepDanbooru's PyTorch port (A1111's
model-resnet_custom_v3.pt); tag_text.py turns their scores into the text each face answers with
(ComfyUI's WD14Tagger|pysssss, A1111's /sdapi/v1/interrogate, the tagger extension's API)."""
