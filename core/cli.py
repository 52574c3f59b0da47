"""Command-line flags, with the AUTOMATIC1111 WebUI's names and meanings.

A WebUI user's ``COMMANDLINE_ARGS`` (``--listen --port 7861 --xformers --medvram``) must work
unchanged, so names, defaults and value formats follow the WebUI's ``modules/cmd_args.py``.
Only flags that Kiln honours exist here: a flag that silently does nothing is worse than an
error. Parsing is pure (no torch, no gradio) so ``--help`` and typos answer instantly.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 7860
PRECISIONS = ("full", "half", "autocast")

# Modules ``--use-cpu`` can move to the CPU. Kiln's model code ("sd": checkpoint, VAE, text
# encoders, training), the dataset taggers/captioners (the WebUI calls them "interrogate") and
# the ESRGAN-family upscalers (Kiln reads ESRGAN and Real-ESRGAN files with one upscaler).
CPU_MODULES = ("sd", "interrogate", "esrgan")
CPU_MODULE_ALIASES = {"realesrgan": "esrgan"}
# WebUI module names that have no counterpart in Kiln: accepted (so WebUI command lines keep
# working) with a warning, instead of failing the start.
WEBUI_ONLY_CPU_MODULES = ("gfpgan", "codeformer", "bsrgan", "scunet", "swinir")


# AUTOMATIC1111 WebUI flags Kiln does not have. Named only to tell a user who copied their
# COMMANDLINE_ARGS why the start stopped (rather than suggesting an unrelated Kiln flag).
WEBUI_FLAGS_NOT_IN_KILN = frozenset("""
--update-all-extensions --skip-python-version-check --skip-torch-cuda-test --reinstall-xformers
--reinstall-torch --update-check --tests --no-tests --skip-install --config --gfpgan-dir
--gfpgan-model --no-progressbar-hiding --max-batch-count --textual-inversion-templates-dir
--localizations-dir --allow-code --lowram --always-batch-cond-uncond --unload-gfpgan
--upcast-sampling --share --ngrok --ngrok-region --enable-insecure-extension-access
--codeformer-models-path --gfpgan-models-path --bsrgan-models-path --realesrgan-models-path
--clip-models-path --force-enable-xformers --xformers-flash-attention --deepdanbooru
--opt-split-attention --opt-sub-quad-attention --sub-quad-q-chunk-size --sub-quad-kv-chunk-size
--sub-quad-chunk-threshold --opt-split-attention-invokeai --opt-split-attention-v1
--opt-sdp-no-mem-attention --disable-opt-split-attention --disable-nan-check
--show-negative-prompt --ui-config-file --hide-ui-dir-config --freeze-settings
--ui-settings-file --gradio-debug --gradio-img2img-tool --gradio-inpaint-tool --opt-channelslast
--styles-file --autolaunch --theme --use-textbox-seed --disable-console-progressbars
--enable-console-prompts --vae-path --disable-safe-unpickle --api-auth --api-log
--ui-debug-mode --administrator --cors-allow-origins --cors-allow-origins-regex --tls-keyfile
--tls-certfile --disable-tls-verify --gradio-queue --no-gradio-queue --skip-version-check
--no-hashing --no-download-sd-model --subpath --add-stop-route
""".split())


class FlagError(ValueError):
    """A malformed flag value; the parser turns it into a usage error (exit code 2)."""


@dataclass
class Flags:
    """The parsed command line. Paths are as given (resolved later by ``KilnPaths``)."""

    listen: bool = False
    port: int = DEFAULT_PORT
    server_name: str | None = None
    api: bool = False
    nowebui: bool = False
    auth: list[tuple[str, str]] = field(default_factory=list)
    gradio_auth_path: Path | None = None
    data_dir: Path | None = None
    ckpt_dir: Path | None = None
    vae_dir: Path | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    hypernetwork_dir: Path | None = None
    esrgan_models_path: Path | None = None
    ckpt: str | None = None
    xformers: bool = False
    opt_sdp_attention: bool = False
    medvram: bool = False
    lowvram: bool = False
    no_half: bool = False
    no_half_vae: bool = False
    precision: str = "autocast"
    device_id: int | None = None
    use_cpu: list[str] = field(default_factory=list)
    # Things worth telling the user that do not stop the start (e.g. a WebUI-only --use-cpu name).
    warnings: list[str] = field(default_factory=list)

    @property
    def api_enabled(self) -> bool:
        """``--nowebui`` serves the API alone, so it implies ``--api`` (as in the WebUI)."""
        return self.api or self.nowebui

    @property
    def host(self) -> str:
        """Address to bind: ``--server-name`` wins, then ``--listen`` (all interfaces), else local only."""
        if self.server_name:
            return self.server_name
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth)


def parse_auth(text: str) -> list[tuple[str, str]]:
    """``"u1:p1,u2:p2"`` (commas and/or new lines) → ``[("u1", "p1"), ("u2", "p2")]``.

    The password is everything after the first colon, so it may itself contain colons.
    """
    credentials: list[tuple[str, str]] = []
    for line in text.splitlines():
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            user, sep, password = item.partition(":")
            user = user.strip()
            if not sep or not user or not password:
                raise FlagError(
                    f"credential {_redact(item)!r} is not 'user:password' "
                    "(both parts non-empty; separate several with commas)"
                )
            credentials.append((user, password))
    return credentials


def _redact(item: str) -> str:
    # Never echo a password back into logs; the user part is enough to find the bad entry.
    user, sep, _ = item.partition(":")
    return f"{user}:***" if sep else item


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use a port from 1 to 65535")
    return value


def _device_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CUDA device index (0, 1, ...)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; CUDA device indexes start at 0")
    return value


def _auth_value(text: str) -> list[tuple[str, str]]:
    try:
        creds = parse_auth(text)
    except FlagError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not creds:
        raise argparse.ArgumentTypeError("is empty; give user:password")
    return creds


class _KilnArgumentParser(argparse.ArgumentParser):
    """argparse, but an unknown flag names the nearest known one."""

    def known_flags(self) -> list[str]:
        return sorted(
            opt for action in self._actions for opt in action.option_strings if opt.startswith("--")
        )

    def error(self, message: str):  # type: ignore[override]
        # The full usage block is 10+ lines and buries the one line that matters.
        self.exit(2, f"{self.prog}: error: {message}\n(run with --help to list the flags)\n")

    def unknown_argument_message(self, arg: str) -> str:
        name = arg.split("=", 1)[0]
        if not name.startswith("-"):
            return f"unexpected argument {arg!r} (flags start with --)"
        if name in WEBUI_FLAGS_NOT_IN_KILN:
            return f"unknown flag {name}: a WebUI flag that Kiln does not have; remove it"
        close = difflib.get_close_matches(name, self.known_flags(), n=1, cutoff=0.6)
        if close:
            return f"unknown flag {name}; did you mean {close[0]}?"
        return f"unknown flag {name}"


def build_parser() -> argparse.ArgumentParser:
    p = _KilnArgumentParser(
        prog="app.py",
        description="Kiln: a Stable Diffusion studio (generate, prepare datasets, train) in one web app. "
        "Flags use the AUTOMATIC1111 WebUI's names.",
        allow_abbrev=False,  # "--lis" must not quietly mean --listen; new flags would change its meaning
    )

    server = p.add_argument_group("server")
    server.add_argument("--listen", action="store_true",
                        help="bind 0.0.0.0 so other machines on the network can connect")
    server.add_argument("--port", type=_port, default=None,
                        help=f"port to serve on (default {DEFAULT_PORT}, {DEFAULT_PORT + 1} with --nowebui, as the WebUI);"
                             " ports below 1024 need root/admin")
    server.add_argument("--server-name", default=None, metavar="HOST",
                        help="host name or address to bind (overrides --listen)")
    server.add_argument("--api", action="store_true",
                        help="serve the WebUI-compatible REST API (/sdapi/v1/..., docs at /docs) beside the UI")
    server.add_argument("--nowebui", action="store_true",
                        help="serve only the REST API, no web UI (implies --api)")
    server.add_argument("--gradio-auth", type=_auth_value, default=None, metavar="USER:PASS[,USER2:PASS2]",
                        help='require a login, e.g. "user:password" or "u1:p1,u2:p2"')
    server.add_argument("--gradio-auth-path", type=Path, default=None, metavar="FILE",
                        help="read logins from FILE: user:password entries separated by commas or new lines")

    folders = p.add_argument_group("folders")
    folders.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                         help="root for models/, embeddings/, outputs/, extensions/, config.json, cache.json "
                         "(default: the Kiln folder)")
    folders.add_argument("--ckpt-dir", type=Path, default=None, metavar="DIR",
                         help="checkpoints folder (default: DATA_DIR/models/Stable-diffusion)")
    folders.add_argument("--vae-dir", type=Path, default=None, metavar="DIR",
                         help="VAE folder (default: DATA_DIR/models/VAE)")
    folders.add_argument("--lora-dir", type=Path, default=None, metavar="DIR",
                         help="LoRA / LyCORIS folder (default: DATA_DIR/models/Lora)")
    folders.add_argument("--embeddings-dir", type=Path, default=None, metavar="DIR",
                         help="textual inversion embeddings folder (default: DATA_DIR/embeddings)")
    folders.add_argument("--hypernetwork-dir", type=Path, default=None, metavar="DIR",
                         help="hypernetworks folder (default: DATA_DIR/models/hypernetworks)")
    folders.add_argument("--esrgan-models-path", type=Path, default=None, metavar="DIR",
                         help="ESRGAN upscaler models folder (default: DATA_DIR/models/ESRGAN)")
    folders.add_argument("--ckpt", default=None, metavar="PATH_OR_NAME",
                         help="checkpoint to load at start: a file path (added to the list) or a name "
                         "in the checkpoints folder")

    perf = p.add_argument_group("device and precision")
    perf.add_argument("--xformers", action="store_true",
                      help="use xformers attention when it is installed (else PyTorch SDPA, with a warning)")
    perf.add_argument("--opt-sdp-attention", action="store_true",
                      help="use PyTorch scaled-dot-product attention (Kiln's default; --xformers wins if both)")
    perf.add_argument("--medvram", action="store_true",
                      help="keep only the model part in use on the GPU (slower, much less VRAM)")
    perf.add_argument("--lowvram", action="store_true",
                      help="move model blocks to the GPU one at a time (slowest, least VRAM; wins over --medvram)")
    perf.add_argument("--no-half", action="store_true",
                      help="keep the model in 32-bit floats (more VRAM; for GPUs that produce NaNs in fp16)")
    perf.add_argument("--no-half-vae", action="store_true",
                      help="keep the VAE in 32-bit floats (fixes black images from some VAEs)")
    perf.add_argument("--precision", choices=PRECISIONS, default="autocast",
                      help="full: 32-bit everywhere (like --no-half); half: 16-bit without autocast; "
                      "autocast (default): 16-bit weights with torch.autocast")
    perf.add_argument("--device-id", type=_device_id, default=None, metavar="N",
                      help="CUDA device index to use (default: the first)")
    perf.add_argument("--use-cpu", nargs="+", type=str.lower, default=[], metavar="MODULE",
                      help=f"run these modules on the CPU: {', '.join(('all',) + CPU_MODULES)} "
                      "(sd = checkpoint/VAE/text encoders, interrogate = taggers and captioners, "
                      "esrgan = ESRGAN/Real-ESRGAN upscalers)")
    return p


def parse_flags(argv: Sequence[str] | None = None) -> Flags:
    """Parse ``argv`` (default ``sys.argv[1:]``). Bad input exits with code 2 and a clear message."""
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    ns, extras = parser.parse_known_args(args_list)
    if extras:
        parser.error(parser.unknown_argument_message(extras[0]))  # type: ignore[attr-defined]

    flags = Flags(
        listen=ns.listen,
        port=ns.port if ns.port is not None else (DEFAULT_PORT + 1 if ns.nowebui else DEFAULT_PORT),
        server_name=ns.server_name,
        api=ns.api,
        nowebui=ns.nowebui,
        gradio_auth_path=ns.gradio_auth_path,
        data_dir=ns.data_dir,
        ckpt_dir=ns.ckpt_dir,
        vae_dir=ns.vae_dir,
        lora_dir=ns.lora_dir,
        embeddings_dir=ns.embeddings_dir,
        hypernetwork_dir=ns.hypernetwork_dir,
        esrgan_models_path=ns.esrgan_models_path,
        ckpt=ns.ckpt,
        xformers=ns.xformers,
        opt_sdp_attention=ns.opt_sdp_attention,
        medvram=ns.medvram,
        lowvram=ns.lowvram,
        no_half=ns.no_half,
        no_half_vae=ns.no_half_vae,
        precision=ns.precision,
        device_id=ns.device_id,
    )
    flags.auth = list(ns.gradio_auth or [])
    if ns.gradio_auth_path is not None:
        try:
            flags.auth += read_auth_file(ns.gradio_auth_path)
        except FlagError as exc:
            parser.error(f"argument --gradio-auth-path: {exc}")
    try:
        flags.use_cpu, flags.warnings = _check_cpu_modules(ns.use_cpu)
    except FlagError as exc:
        parser.error(f"argument --use-cpu: {exc}")
    if flags.lowvram and flags.medvram:
        flags.warnings.append("--lowvram and --medvram both given; using --lowvram")
    return flags


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """Logins from a ``--gradio-auth-path`` file (same format as ``--gradio-auth``, new lines allowed)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise FlagError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        creds = parse_auth(text)
    except FlagError as exc:
        raise FlagError(f"{path}: {exc}") from None
    if not creds:
        raise FlagError(f"{path} holds no user:password entries")
    return creds


def _check_cpu_modules(names: list[str]) -> tuple[list[str], list[str]]:
    modules: list[str] = []
    warnings: list[str] = []
    valid = ("all",) + CPU_MODULES
    for name in names:
        name = CPU_MODULE_ALIASES.get(name, name)
        if name in valid:
            if name not in modules:
                modules.append(name)
        elif name in WEBUI_ONLY_CPU_MODULES:
            warnings.append(f"--use-cpu {name}: Kiln has no {name} module; ignored")
        else:
            close = difflib.get_close_matches(name, valid + WEBUI_ONLY_CPU_MODULES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise FlagError(f"unknown module {name!r} (choose from {', '.join(valid)}){hint}")
    return modules, warnings
