"""Taggers and captioners for Dataset › Tag: WD14 (ONNX), DeepBooru (the WebUI's torch port), BLIP / GIT."""
