"""``python -m core.training CONFIG.toml``: a kohya config trained headless, with a progress bar.

``python -m core.training dreambooth CONFIG.toml``: a DreamBooth / fine-tune run from a TOML of
train_db.py's names (core/training/dreambooth_config.py), the checkpoint written to
models/Stable-diffusion (or ``output_dir``).

``python -m core.training extract-lora --model_org BASE --model_tuned TUNED --save_to OUT.safetensors``:
a LoRA from the difference of two checkpoints, with kohya's ``extract_lora_from_models.py`` options
(``--dim``, ``--conv_dim``, ``--clamp_quantile``, ``--min_diff``, ``--save_precision``, ``--device``).

The same TOML the Train tab saves and loads (sd-scripts' argument names, flat or in sections).
Exit status 0 when the files were written, 1 on a problem (its message on stderr), 130 when
interrupted (the run saves what it has and a state to resume from).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def resolve_checkpoint(name: str | None, ckpt_dir: Path) -> Path:
    """``pretrained_model_name_or_path`` as a path, or a file name in the checkpoint folder (or the
    built-in model's folder); kohya's Hugging Face ids cannot be fetched here and say so."""
    from core.errors import KilnError

    if not name:
        raise KilnError("pretrained_model_name_or_path is not set", hint="the base checkpoint (.safetensors)")
    for candidate in (Path(name), ckpt_dir / name, REPO / "models" / "Stable-diffusion" / name):
        if candidate.is_file():
            return candidate
        if candidate.with_suffix(".safetensors").is_file():
            return candidate.with_suffix(".safetensors")
    raise KilnError(f"base checkpoint {name!r} not found", path=ckpt_dir,
                    hint="give a .safetensors file path or a name in models/Stable-diffusion (no model hub here)")


def build_parser() -> argparse.ArgumentParser:
    from core.training.config_toml import config_help

    parser = argparse.ArgumentParser(prog="python -m core.training", description=__doc__,
                                     epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a kohya training TOML (sd-scripts' argument names)")
    parser.add_argument("--data-dir", default=None, help="Kiln's data folder, as the app's --data-dir")
    parser.add_argument("--allow-unsupported", action="store_true",
                        help="train even when the config sets options Kiln's trainer does not have (listed)")
    parser.add_argument("--ignore-check-errors", action="store_true",
                        help="train even when the dataset check finds errors")
    return parser


def build_extract_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.training extract-lora",
                                     description="A kohya LoRA from the SVD of tuned − base, per layer.")
    parser.add_argument("--model_org", required=True, help="the base checkpoint (.safetensors)")
    parser.add_argument("--model_tuned", required=True, help="the fine-tuned checkpoint; the LoRA is base → tuned")
    parser.add_argument("--save_to", required=True, help="the LoRA file to write (.safetensors; never overwritten)")
    parser.add_argument("--dim", type=int, default=4, help="rank of the Linear / 1×1 layers (default 4)")
    parser.add_argument("--conv_dim", type=int, default=None, help="rank of the 3×3 convs (default: none)")
    parser.add_argument("--clamp_quantile", type=float, default=0.99,
                        help="clamp the factors at ± this quantile of their values (default 0.99; 1 = no clamp)")
    parser.add_argument("--min_diff", type=float, default=0.01,
                        help="the text encoder is extracted only when a weight differs by more (default 0.01)")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                        help="dtype of the file (default: float)")
    parser.add_argument("--device", default=None, help="where the SVDs run, e.g. cuda (default: the CPU)")
    return parser


def extract_main(argv: list[str]) -> int:
    from core.errors import KilnError
    from core.training.extract_lora import extract_lora

    args = build_extract_parser().parse_args(argv)
    try:
        if Path(args.save_to).exists():
            raise KilnError("save_to: the file is already there", path=args.save_to, hint="choose another name")
        result = extract_lora(args.model_org, args.model_tuned, args.dim, args.conv_dim, args.clamp_quantile,
                              min_diff=args.min_diff, save_to=args.save_to, save_precision=args.save_precision,
                              device=args.device,
                              on_layer=lambda i, n: print(f"\rlayer {i}/{n}", end="", file=sys.stderr, flush=True))
        print(f"\n{result.unet_modules} U-Net and {result.te_modules} text-encoder layers", file=sys.stderr)
        print(result.path)
        return 0
    except KilnError as exc:
        print(f"\nerror: {exc.message}", file=sys.stderr)
        return 1


def dreambooth_main(argv: list[str]) -> int:
    """Headless DreamBooth: class pictures through a private engine's txt2img, then the run."""
    from core.errors import KilnError

    parser = argparse.ArgumentParser(prog="python -m core.training dreambooth",
                                     description="DreamBooth / fine-tune from a train_db.py-style TOML.")
    parser.add_argument("config", help="a TOML with train_db.py / fine_tune.py argument names")
    parser.add_argument("--data-dir", default=None, help="Kiln's data folder, as the app's --data-dir")
    args = parser.parse_args(argv)
    try:
        from core.cli import parse_flags
        from core.engine import Engine
        from core.jobs import JobQueue
        from core.settings import Settings
        from core.training.dreambooth_config import load_dreambooth_config
        from core.training.jobs import dreambooth_job

        config, unknown = load_dreambooth_config(args.config)
        for key in unknown:
            print(f"warning: {key}: not a key Kiln's DreamBooth trainer has; not applied", file=sys.stderr)
        flags = parse_flags(["--data-dir", args.data_dir] if args.data_dir else [])
        settings = Settings.from_flags(flags, REPO)
        engine, queue = Engine(settings), JobQueue()
        base = config.pretrained_model_name_or_path
        entry = engine.registry.find_checkpoint(base) if base else None
        if base and entry is None:
            path = resolve_checkpoint(base, settings.paths.ckpt_dir)
            entry = engine.registry.find_checkpoint(path.name)
            if entry is None:
                raise KilnError("pretrained_model_name_or_path: the base must be in models/Stable-diffusion",
                                path=path, hint="copy or link it there")
        try:
            job = queue.submit(dreambooth_job(engine, config, entry.name if entry else None),
                               f"DreamBooth {config.output_name}", kind="train")
            last = -1
            while not job.done_event.wait(1.0):
                p = job.progress
                if p.step != last:
                    print(f"\r{p.textinfo} {p.step}/{p.total_steps}", end="", file=sys.stderr, flush=True)
                    last = p.step
            files = job.wait(0)
        except KeyboardInterrupt:
            queue.stop(job.id)
            files = job.wait(None)
        finally:
            queue.shutdown()
        print(file=sys.stderr)
        for artifact in job.artifacts:
            if artifact.kind == "note":
                print(f"note: {artifact.label}", file=sys.stderr)
        for path in files:
            print(path)
        return 0
    except KilnError as exc:
        print(f"\nerror: {exc.message}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    from core.dataset.__main__ import kiln_paths
    from core.errors import KilnError
    from core.models.checkpoint import load_checkpoint
    from core.training.advice import config_guidance
    from core.training.config import load_config, unknown_key_messages
    from core.training.from_config import lora_job, model_mismatches
    from core.training.lora import Hooks, train_lora

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["extract-lora"]:
        return extract_main(argv[1:])
    if argv[:1] == ["dreambooth"]:
        return dreambooth_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config, unknown = load_config(args.config)
        blocking = []
        for line in unknown_key_messages(unknown, args.config):
            print(f"warning: {line}", file=sys.stderr)
            if "no effect" not in line:
                blocking.append(line.split(":")[0])
        if blocking and not args.allow_unsupported:
            raise KilnError(f"the config has keys Kiln would not apply: {', '.join(blocking)}",
                            hint="fix or remove them, or pass --allow-unsupported to train without them")
        for line in config_guidance(config):
            print(f"note: {line}", file=sys.stderr)
        paths = kiln_paths(args)
        job = lora_job(config, default_output_dir=paths.lora_dir, allow_unsupported=args.allow_unsupported,
                       ignore_check_errors=args.ignore_check_errors)
        model = load_checkpoint(resolve_checkpoint(config.pretrained_model_name_or_path, paths.ckpt_dir))
        for line in model_mismatches(config, model.spec):
            print(f"note: {line}", file=sys.stderr)
        started = time.monotonic()

        def show(report) -> None:
            elapsed = time.monotonic() - started
            eta = elapsed / report.global_step * (report.total_steps - report.global_step)
            line = (f"\rstep {report.global_step}/{report.total_steps} epoch {report.epoch} "
                    f"loss {report.loss:.4f} avg {report.average_loss:.4f} lr {report.lr:.3g} "
                    f"{report.global_step / elapsed:.2f} it/s ETA {eta:.0f}s")
            print(line, end="", file=sys.stderr, flush=True)
        files = train_lora(job, model, Hooks(on_step=show,
                                             on_file=lambda p, e: print(f"\nsaved {p}", file=sys.stderr),
                                             on_note=lambda text: print(f"\nnote: {text}", file=sys.stderr)))
        print(file=sys.stderr)
        for path in files:
            print(path)
        return 0
    except KilnError as exc:
        print(f"\nerror: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
