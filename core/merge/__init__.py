"""The Checkpoint Merger (the WebUI's 模型融合): recipe and names (``recipe``), streamed reading
(``sources``), the merge itself (``merger``), LoRA baking (``lora_bake``) and the queue job (``job``)."""
