"""The trainer: kohya's data rules (data.py), a runtime LoRA over a frozen base (network.py), the
loop with bit-exact resume (loop.py), a LoRA run from dataset to kohya files (lora.py)."""
