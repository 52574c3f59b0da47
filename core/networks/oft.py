"""OFT and BOFT layers: the weight turned by block-diagonal orthogonal matrices.

The numbers follow the WebUI (AUTOMATIC1111 v1.10.1, ``extensions-builtin/Lora/network_oft.py``)
and the trainers that write the files (kohya-ss sd-scripts ``networks/oft.py``, LyCORIS
``diag_oft.py`` / ``boft.py``). One layer's parts (file key ``<module>.<part>``):

* ``oft_blocks`` [num_blocks, b, b]: sd-scripts' OFT (``oft_unet_*`` names) and LyCORIS's
  diag-OFT. The blocks are free parameters; each rotation is the Cayley transform
  R = (I + Q)(I − Q)⁻¹ of the skew-symmetric Q = blocks − blocksᵀ (neither trainer halves Q).
  ``alpha`` is a constraint, not a scale: when alpha > 0, the norm of Q over all blocks is
  clamped to alpha · out_dim.
* ``oft_diag`` [num_blocks, b, b]: older LyCORIS diag-OFT files, which store R itself.
* a 4-dim ``oft_blocks`` / ``oft_diag`` [boft_m, num_blocks, b, b]: LyCORIS BOFT, boft_m
  block-diagonal factors, each applied between butterfly permutations of the output rows.
* ``rescale`` (optional, out_dim numbers): scales each output row of the turned weight.

Merging (rows = output channels, W flattened to [out_dim, rest]):

* OFT: the rows form num_blocks consecutive groups of b; group k becomes R_kᵀ W_k (the
  WebUI's and sd-scripts' ``einsum("k n m, k n ... -> k m ...")``).
* BOFT, for i = 0 … boft_m − 1 with h = (b // 2) · 2^i: within every run of 2h rows the two
  halves are interleaved (row c·2h + g·h + j moves to c·2h + 2j + g), each group of b rows
  becomes R_i,d W_d, and the rows move back.
* the multiplier scales the difference: ΔW = m · (rescale · W' − W), as the WebUI's
  ``finalize_updown`` does (its OFT module fixes the scale at 1, so alpha never scales it).

Where Kiln differs from the WebUI, it is where the WebUI cannot load the file: the block
layout is read from the tensor's shape (the WebUI re-derives it and fails when its guess is
the transpose), a 4-dim ``oft_blocks`` is BOFT (the WebUI sends it down the 3-dim path), and
alpha = 0 means "no constraint" as in LyCORIS (the WebUI clamps Q to 0, i.e. does nothing).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

BLOCKS, DIAG, ALPHA, RESCALE = "oft_blocks", "oft_diag", "alpha", "rescale"
OFT_PARTS = (BLOCKS, DIAG)


class OFTPartError(RuntimeError):
    """One stored OFT tensor that cannot be used; ``part`` names it (``oft_blocks``...) so a
    report can point at the file key."""

    def __init__(self, part: str, problem: str):
        self.part = part
        super().__init__(problem)


# --- checks that need no model ----------------------------------------------------------------

def check_oft_tensors(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(file key, problem) for every OFT tensor that no model could use (wrong rank, non-square
    blocks, not numbers). Checked when a file is read, so a broken file is refused by name
    instead of failing layer by layer at every generation."""
    problems: list[tuple[str, str]] = []
    for key, tensor in tensors.items():
        base, _, part = key.rpartition(".")
        if part in OFT_PARTS:
            problem = _rotation_problem(tensor)
        elif part in (ALPHA, RESCALE) and any(f"{base}.{p}" in tensors for p in OFT_PARTS):
            problem = _companion_problem(part, tensor)
        else:
            continue
        if problem:
            problems.append((key, problem))
    return problems


def _rotation_problem(t: torch.Tensor) -> str | None:
    shape = list(t.shape)
    if t.dim() not in (3, 4):
        return (f"shape {shape}: expected [num_blocks, block_size, block_size] (OFT) or "
                f"[boft_m, num_blocks, block_size, block_size] (BOFT)")
    if t.shape[-1] != t.shape[-2] or t.numel() == 0:
        return f"shape {shape}: the blocks (last two dimensions) must be square and not empty"
    if t.dim() == 4 and t.shape[-1] < 2:
        return f"shape {shape}: BOFT blocks must be at least 2×2 (the butterfly pairs halves of a block)"
    return _number_problem(t)


def _companion_problem(part: str, t: torch.Tensor) -> str | None:
    if part == ALPHA:
        if t.numel() != 1:
            return f"shape {list(t.shape)}: alpha (the OFT constraint) must be a single number"
        # LyCORIS stores its default constraint 0 as an integer tensor
        if t.dtype == torch.bool or t.is_complex():
            return f"dtype {t.dtype}: alpha (the OFT constraint) must be a number"
        return None if bool(torch.isfinite(t.double()).all()) else "alpha is NaN or infinite"
    return _number_problem(t)


def _number_problem(t: torch.Tensor) -> str | None:
    if not t.is_floating_point():
        return f"dtype {t.dtype}: expected floating-point values"
    if not bool(torch.isfinite(t).all()):
        return "contains NaN or infinite values"
    return None


# --- rotations ---------------------------------------------------------------------------------

def cayley(blocks: torch.Tensor, constraint: float | None) -> torch.Tensor:
    """R = (I + Q)(I − Q)⁻¹ per block (last two dims), Q = blocks − blocksᵀ, with ‖Q‖ (all blocks
    together) clamped to ``constraint`` when it is positive. I − Q is always invertible: a real
    skew-symmetric Q has only imaginary eigenvalues."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint is not None and constraint > 0:
        norm = q.norm()
        # the WebUI's / sd-scripts' form; the 1e-8 keeps an all-zero Q (a fresh file) at zero
        q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return (eye + q) @ torch.linalg.inv(eye - q)


def rotations(parts: Mapping[str, torch.Tensor], out_dim: int, device: torch.device) -> tuple[str, torch.Tensor]:
    """(the part used, the rotation blocks in float32): Cayley of ``oft_blocks`` (preferred, as
    the WebUI), else ``oft_diag`` as stored."""
    if BLOCKS in parts:
        blocks = parts[BLOCKS].to(device=device, dtype=torch.float32)
        constraint = float(parts[ALPHA].item()) * out_dim if ALPHA in parts else None
        return BLOCKS, cayley(blocks, constraint)
    return DIAG, parts[DIAG].to(device=device, dtype=torch.float32)


# --- merging -----------------------------------------------------------------------------------

def rotate_blocks(r: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """OFT: group k of ``rows`` [num_blocks·b, rest] becomes R_kᵀ W_k."""
    num_blocks, b, _ = r.shape
    grouped = rows.reshape(num_blocks, b, -1)
    return torch.einsum("knm,knr->kmr", r, grouped).reshape(rows.shape)


def _interleave(rows: torch.Tensor, half: int) -> torch.Tensor:
    """Row c·2h + g·h + j → c·2h + 2j + g: the two halves of each run of 2h rows interleaved."""
    n, rest = rows.shape
    return rows.reshape(n // (2 * half), 2, half, rest).transpose(1, 2).reshape(n, rest)


def _deinterleave(rows: torch.Tensor, half: int) -> torch.Tensor:
    n, rest = rows.shape
    return rows.reshape(n // (2 * half), half, 2, rest).transpose(1, 2).reshape(n, rest)


def butterfly(r: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """BOFT: each factor R_i (block-diagonal, R_i,d W_d on groups of b rows) between butterfly
    permutations whose stride doubles with i."""
    boft_m, num_blocks, b, _ = r.shape
    for i in range(boft_m):
        half = (b // 2) * 2 ** i
        turned = _interleave(rows, half).reshape(num_blocks, b, -1)
        turned = torch.einsum("dij,djr->dir", r[i], turned)
        rows = _deinterleave(turned.reshape(rows.shape), half)
    return rows


def _check_layout(part: str, r: torch.Tensor, out_dim: int) -> None:
    """The stored blocks must tile the layer's output rows (and, for BOFT, every butterfly stride)."""
    shape = list(r.shape)
    num_blocks, b = r.shape[-3], r.shape[-1]
    if num_blocks * b != out_dim:
        raise OFTPartError(part, f"OFT {shape}: {num_blocks} blocks of {b} rows cover {num_blocks * b} "
                                 f"output rows, the layer has {out_dim}")
    if r.dim() == 4:
        widest = 2 * (b // 2) * 2 ** (r.shape[0] - 1)
        if out_dim % widest:
            raise OFTPartError(part, f"BOFT {shape}: {r.shape[0]} butterfly factors need the output rows "
                                     f"({out_dim}) to be a multiple of {widest}")


def oft_updown(parts: Mapping[str, torch.Tensor], orig: torch.Tensor) -> torch.Tensor:
    """rescale · W' − W for one Linear / Conv2d weight ``orig`` (float32), before the multiplier.
    Raises ``OFTPartError`` when the stored blocks do not fit this layer."""
    if orig.dim() < 2:
        # the WebUI has no output width for norm layers either (its OFT module fails there)
        raise OFTPartError(BLOCKS if BLOCKS in parts else DIAG,
                           f"OFT applies to Linear and Conv2d layers, not a {orig.dim()}-D weight")
    out_dim = orig.shape[0]
    part, r = rotations(parts, out_dim, orig.device)
    _check_layout(part, r, out_dim)
    rows = orig.reshape(out_dim, -1)
    turned = butterfly(r, rows) if r.dim() == 4 else rotate_blocks(r, rows)
    if RESCALE in parts:
        rescale = parts[RESCALE].to(device=orig.device, dtype=torch.float32)
        if rescale.numel() != out_dim:
            raise OFTPartError(RESCALE, f"rescale {list(rescale.shape)} has {rescale.numel()} values, "
                                        f"the layer has {out_dim} output rows")
        turned = rescale.reshape(out_dim, 1) * turned
    return (turned - rows).reshape(orig.shape)
