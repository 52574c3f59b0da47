"""Face restoration (the WebUI's GFPGAN / CodeFormer): why Kiln refuses it, and what to do instead.

The WebUI finds faces with facexlib's RetinaFace detector, crops and aligns each to 512x512, runs
GFPGAN or CodeFormer (through spandrel_extra_arches) and pastes the result back. Kiln has none of
that chain: spandrel needs a torchvision built for the installed torch (PyPI's wheels are built
against the CUDA torch and do not import on a CPU one), facexlib downloads its detector at first
use, and CodeFormer's licence forbids commercial use. So a request for it is refused by name with
the alternative that needs no extra model: inpaint the face in img2img at full resolution.
"""

from __future__ import annotations

FACE_RESTORE_REASON = ("face restoration (GFPGAN / CodeFormer) is not available in Kiln: it needs a face detector "
                       "(facexlib) and spandrel with a torchvision built for the installed torch")
FACE_RESTORE_HINT = ("leave it off; to fix a face, inpaint it in img2img with 'Inpaint area: Only masked' "
                     "(API: inpaint_full_res true) and denoising 0.3-0.5, which redraws the face at full resolution")
