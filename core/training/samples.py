"""Sample pictures during training from kohya's ``sample_prompts`` file.

One prompt per line; ``#`` lines and blank lines skipped; options after the prompt as kohya
writes them: ``--n`` negative prompt, ``--w`` / ``--h`` size, ``--d`` seed, ``--l`` CFG scale,
``--s`` steps (sd-scripts ``train_util.line_to_prompt_dict``). The pictures come from Kiln's own
txt2img pipeline (the prompt language of the WebUI included) with the LoRA being trained attached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.dataset.captions import read_caption
from core.errors import KilnError

# kohya's --sample_sampler names → the WebUI's sampler names Kiln takes.
KOHYA_SAMPLERS = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "k_lms": "LMS", "euler": "Euler", "k_euler": "Euler",
    "euler_a": "Euler a", "k_euler_a": "Euler a", "heun": "Heun", "k_heun": "Heun", "dpm_2": "DPM2",
    "k_dpm_2": "DPM2", "dpm_2_a": "DPM2 a", "k_dpm_2_a": "DPM2 a", "dpmsolver": "DPM++ 2M",
    "dpmsolver++": "DPM++ 2M", "dpmsingle": "DPM++ 2S a",
}


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    cfg_scale: float = 7.5  # kohya's default scale
    steps: int = 30  # kohya's default sample steps


_OPTION = re.compile(r"\s--(n|w|h|d|l|s)\s+")


def parse_prompt_line(line: str) -> SamplePrompt:
    parts = _OPTION.split(" " + line.strip())
    prompt = parts[0].strip()
    values: dict[str, object] = {}
    for key, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if key == "n":
                values["negative_prompt"] = value
            elif key in ("w", "h"):
                values["width" if key == "w" else "height"] = int(value)
            elif key == "d":
                values["seed"] = int(value)
            elif key == "l":
                values["cfg_scale"] = float(value)
            elif key == "s":
                values["steps"] = int(value)
        except ValueError:
            raise KilnError(f"sample prompt option --{key} {value!r} is not a number", hint=line) from None
    return SamplePrompt(prompt, **values)


def read_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    caption = read_caption(path)
    if not caption.exists:
        raise KilnError("sample_prompts file not found", path=path)
    prompts = [parse_prompt_line(line) for line in caption.text.splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise KilnError("the sample_prompts file has no prompt", path=path)
    return prompts


def sampler_name(kohya_name: str) -> str:
    name = KOHYA_SAMPLERS.get((kohya_name or "ddim").lower())
    if name is None:
        raise KilnError(f"sample_sampler {kohya_name!r} is not one kohya knows", hint=", ".join(KOHYA_SAMPLERS))
    return name
