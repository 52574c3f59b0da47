"""Command-line flags, with the AUTOMATIC1111 WebUI's names and meanings.

A WebUI user's ``COMMANDLINE_ARGS`` (``--listen --port 7861 --xformers --medvram``) must work
unchanged, so names, defaults and value formats follow the WebUI's ``modules/cmd_args.py``.
A flag never silently does nothing: each WebUI flag is done by Kiln, accepted with one start-up
line saying why nothing changes, or refused with why (the table is core/webui_flags.py). Parsing is
pure (no torch, no gradio) so ``--help`` and typos answer instantly.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 7860
PRECISIONS = ("full", "half", "autocast")
THEMES = ("light", "dark")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

# Modules ``--use-cpu`` can move to the CPU. Kiln's model code ("sd": checkpoint, VAE, text
# encoders, training), the dataset taggers/captioners (the WebUI calls them "interrogate") and
# the ESRGAN-family upscalers (Kiln reads ESRGAN and Real-ESRGAN files with one upscaler).
CPU_MODULES = ("sd", "interrogate", "esrgan")
CPU_MODULE_ALIASES = {"realesrgan": "esrgan"}
# WebUI module names that have no counterpart in Kiln: accepted (so WebUI command lines keep
# working) with a warning, instead of failing the start.
WEBUI_ONLY_CPU_MODULES = ("gfpgan", "codeformer", "bsrgan", "scunet", "swinir")


# The WebUI's flags and their outcomes (done / accepted with a line / refused) live in
# core/webui_flags.py; the names are re-exported here for the parser and the tests.
from core.webui_flags import (  # noqa: E402
    WEBUI_FLAGS_ACCEPTED,
    WEBUI_FLAGS_REFUSED,
)


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
    styles_file: list[str] = field(default_factory=list)  # --styles-file, each a path or a glob
    ckpt: str | None = None
    xformers: bool = False
    opt_sdp_attention: bool = False
    medvram: bool = False
    lowvram: bool = False
    no_half: bool = False
    no_half_vae: bool = False
    precision: str = "autocast"
    device_id: int | None = None  # the first device of --device-id (the WebUI's single index)
    device_ids: tuple[int, ...] = ()  # every device --device-id lists: one worker each
    all_devices: bool = False  # --device-id all: one worker per visible CUDA device
    use_cpu: list[str] = field(default_factory=list)
    # Page and server (the WebUI's flags of the same names).
    autolaunch: bool = False  # open the system browser on the URL once the server answers
    theme: str | None = None  # "light" | "dark"; None = the browser's choice
    api_log: bool = False  # log each API request: method, path, status, seconds
    api_auth: list[tuple[str, str]] = field(default_factory=list)  # HTTP Basic logins for /sdapi/v1/*
    hide_ui_dir_config: bool = False  # folders cannot be changed from the page or the API
    freeze_settings: bool = False  # settings cannot be changed from the page or the API
    insecure: bool = False  # Kiln's own: allow --listen without a login (the WebUI has no such flag)
    operators: list[str] = field(default_factory=list)  # logins that may see and cancel every job
    tls_keyfile: Path | None = None
    tls_certfile: Path | None = None
    cors_allow_origins: list[str] = field(default_factory=list)
    cors_allow_origins_regex: str | None = None
    subpath: str | None = None  # "/sd": the public path prefix behind a reverse proxy
    timeout_keep_alive: int | None = None  # seconds an idle HTTP connection stays open (uvicorn's default)
    loglevel: str | None = None  # console log level; None = INFO
    skip_load_model: bool = False  # --ui-debug-mode / --skip-load-model-at-start: no model load at start
    # --disable-all-extensions / --disable-extra-extensions: load nothing from extensions/ (every
    # extension there is an "extra" one: Kiln ships none of its own).
    disable_all_extensions: bool = False
    disable_extra_extensions: bool = False
    # WebUI flags accepted without effect, in command-line order (each also has a line in warnings).
    webui_accepted: list[str] = field(default_factory=list)
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

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None

    @property
    def logins(self) -> list[str]:
        """Every login name (page and API), each once, in the order given."""
        return list(dict.fromkeys(user for user, _ in [*self.auth, *self.api_auth]))


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
                    f"credential {_redact(item, len(credentials) + 1)} is not 'user:password' "
                    "(both parts non-empty; separate several with commas)"
                )
            credentials.append((user, password))
    return credentials


def _redact(item: str, number: int) -> str:
    # Never echo a password back into logs; the user part is enough to find the bad entry. An entry
    # without a colon may be a password typed alone, so it is named by its position only.
    user, sep, _ = item.partition(":")
    return f"{user + ':***'!r}" if sep else f"number {number} (no ':')"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use a port from 1 to 65535")
    return value


def _device_id(text: str) -> tuple[int, ...] | str:
    """``0`` (the WebUI's form), ``0,1`` (one worker per device) or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    values = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a CUDA device index (use 0, 0,1 or all)") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value} is negative; CUDA device indexes start at 0")
        if value in values:
            raise argparse.ArgumentTypeError(f"device {value} is listed twice; one worker per device")
        values.append(value)
    return tuple(values)


def _auth_value(text: str) -> list[tuple[str, str]]:
    try:
        creds = parse_auth(text)
    except FlagError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not creds:
        raise argparse.ArgumentTypeError("is empty; give user:password")
    return creds


def _login_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    names = [name for name in names if name]
    if not names:
        raise argparse.ArgumentTypeError("is empty; give login names, e.g. alice or alice,bob")
    for name in names:
        if ":" in name:
            raise argparse.ArgumentTypeError(
                f"{name.partition(':')[0]!r}:... is a login name with a password; give the name only (alice,bob)")
    return list(dict.fromkeys(names))


def _origins(text: str) -> list[str]:
    origins = [o.strip() for o in text.split(",") if o.strip()]
    if not origins:
        raise argparse.ArgumentTypeError("is empty; give origins, e.g. http://localhost:3000,https://app.example")
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise argparse.ArgumentTypeError(
                f"{origin!r} is not an origin (scheme://host[:port], no path), e.g. http://localhost:3000")
    return origins


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None
    return text


def _subpath(text: str) -> str:
    path = text.strip().strip("/")
    if not path:
        raise argparse.ArgumentTypeError("is empty; give the path prefix the proxy serves Kiln under, e.g. sd")
    if not re.fullmatch(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*", path) or any(
            part in (".", "..") for part in path.split("/")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL path prefix (letters, digits, . _ ~ - and /)")
    return "/" + path


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give 1 second or more")
    return value


def _file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return path


def _flag_dest(name: str) -> str:
    return "webui_" + name.lstrip("-").replace("-", "_")


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
        close = difflib.get_close_matches(name, self.known_flags(), n=1, cutoff=0.6)
        if close:
            return f"unknown flag {name}; did you mean {close[0]}?"
        return f"unknown flag {name}"


def build_parser() -> argparse.ArgumentParser:
    p = _KilnArgumentParser(
        prog="app.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog is wrapped below, whole flag names
        description="Kiln: a Stable Diffusion studio (generate, prepare datasets, train) in one web app.\n"
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
    folders.add_argument("--styles-file", action="append", default=None, metavar="FILE",
                         help="prompt styles file (the WebUI's styles.csv); give it again for more files, "
                         "or a glob such as 'styles/*.csv'; new styles go to the first "
                         "(default: DATA_DIR/styles.csv)")
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
    perf.add_argument("--device-id", type=_device_id, default=None, metavar="N[,N...]|all",
                      help="CUDA device(s) to use: one worker per device on the same queue "
                      "(default: the first; all = every visible GPU)")
    perf.add_argument("--use-cpu", nargs="+", type=str.lower, default=[], metavar="MODULE",
                      help=f"run these modules on the CPU: {', '.join(('all',) + CPU_MODULES)} "
                      "(sd = checkpoint/VAE/text encoders, interrogate = taggers and captioners, "
                      "esrgan = ESRGAN/Real-ESRGAN upscalers)")

    page = p.add_argument_group("page and server")
    page.add_argument("--autolaunch", action="store_true",
                      help="open the page in the system's browser once the server answers")
    page.add_argument("--theme", type=str.lower, choices=THEMES, default=None,
                      help="open the page in the light or dark theme (default: the browser's)")
    page.add_argument("--api-auth", type=_auth_value, default=None, metavar="USER:PASS[,USER2:PASS2]",
                      help="logins for the REST API (HTTP Basic on /sdapi/v1/*), same format as --gradio-auth")
    page.add_argument("--api-log", action="store_true",
                      help="log each API request: method, path, status and seconds (never bodies or passwords)")
    page.add_argument("--hide-ui-dir-config", action="store_true",
                      help="folders (outdir_* and other path settings) cannot be changed from the page or the API")
    page.add_argument("--freeze-settings", action="store_true",
                      help="settings cannot be changed from the page or the API")
    page.add_argument("--insecure", action="store_true",
                      help="allow --listen (or a --server-name other than this computer) without a login; "
                      "Kiln's own flag: the WebUI serves --listen without a login and has none")
    page.add_argument("--operator", dest="operators", type=_login_names, action="append", default=None,
                      metavar="USER[,USER]",
                      help="logins that may see and cancel every job (others see and cancel only their own)")
    page.add_argument("--tls-keyfile", type=_file, default=None, metavar="FILE",
                      help="serve HTTPS with this private key (PEM); needs --tls-certfile")
    page.add_argument("--tls-certfile", type=_file, default=None, metavar="FILE",
                      help="serve HTTPS with this certificate (PEM); needs --tls-keyfile")
    page.add_argument("--cors-allow-origins", type=_origins, default=None, metavar="ORIGIN[,ORIGIN]",
                      help="web pages on these origins may call the API from a browser, e.g. http://localhost:3000")
    page.add_argument("--cors-allow-origins-regex", type=_regex, default=None, metavar="REGEX",
                      help="the same, for origins matching one regular expression")
    page.add_argument("--subpath", type=_subpath, default=None, metavar="PATH",
                      help="the path prefix a reverse proxy serves Kiln under (e.g. sd for https://host/sd/)")
    page.add_argument("--timeout-keep-alive", type=_seconds, default=None, metavar="SECONDS",
                      help="how long an idle HTTP connection stays open (default: uvicorn's, 5)")
    page.add_argument("--loglevel", type=str.upper, choices=LOG_LEVELS, default=None,
                      help="console log level (default INFO)")
    page.add_argument("--ui-debug-mode", "--skip-load-model-at-start", dest="skip_load_model", action="store_true",
                      help="do not load a checkpoint at start (it loads with the first job)")
    page.add_argument("--disable-all-extensions", action="store_true",
                      help="load no extension from extensions/ (README, section 'Extensions')")
    page.add_argument("--disable-extra-extensions", action="store_true",
                      help="the same in Kiln, which ships no built-in extensions: load none from extensions/")

    # The WebUI's other flags: parsed with the WebUI's nargs and types, hidden from --help (listed in the
    # epilog and the README), acted on in parse_flags.
    for name, spec in {**WEBUI_FLAGS_ACCEPTED, **WEBUI_FLAGS_REFUSED}.items():
        if spec.value is None:
            p.add_argument(name, dest=_flag_dest(name), action="store_true", default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)
        else:
            p.add_argument(name, dest=_flag_dest(name), type=spec.type, metavar=spec.value,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    wrap = textwrap.TextWrapper(width=100, break_on_hyphens=False, break_long_words=False)
    p.epilog = "\n\n".join([
        wrap.fill("Other AUTOMATIC1111 WebUI flags are accepted, each with one start-up line saying why "
                  "nothing changes: " + " ".join(WEBUI_FLAGS_ACCEPTED) + "."),
        wrap.fill("Refused, with the reason: " + " ".join(WEBUI_FLAGS_REFUSED) + "."),
        "README.md, section 'WebUI flags', has the table.",
    ])
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
        styles_file=list(ns.styles_file or []),
        ckpt=ns.ckpt,
        xformers=ns.xformers,
        opt_sdp_attention=ns.opt_sdp_attention,
        medvram=ns.medvram,
        lowvram=ns.lowvram,
        no_half=ns.no_half,
        no_half_vae=ns.no_half_vae,
        precision=ns.precision,
        device_id=ns.device_id[0] if isinstance(ns.device_id, tuple) else None,
        device_ids=ns.device_id if isinstance(ns.device_id, tuple) else (),
        all_devices=ns.device_id == "all",
        autolaunch=ns.autolaunch,
        theme=ns.theme,
        api_log=ns.api_log,
        api_auth=list(ns.api_auth or []),
        hide_ui_dir_config=ns.hide_ui_dir_config,
        freeze_settings=ns.freeze_settings,
        insecure=ns.insecure,
        operators=list(dict.fromkeys(name for names in ns.operators or [] for name in names)),
        tls_keyfile=ns.tls_keyfile,
        tls_certfile=ns.tls_certfile,
        cors_allow_origins=list(ns.cors_allow_origins or []),
        cors_allow_origins_regex=ns.cors_allow_origins_regex,
        subpath=ns.subpath,
        timeout_keep_alive=ns.timeout_keep_alive,
        loglevel=ns.loglevel,
        skip_load_model=ns.skip_load_model,
        disable_all_extensions=ns.disable_all_extensions,
        disable_extra_extensions=ns.disable_extra_extensions,
    )
    given = _given_webui_flags(ns, args_list)
    refused = [name for name in given if name in WEBUI_FLAGS_REFUSED]
    if refused:
        parser.error("\n".join(f"{name}: {WEBUI_FLAGS_REFUSED[name].reason}" for name in refused))
    if (ns.tls_keyfile is None) != (ns.tls_certfile is None):
        parser.error("--tls-keyfile and --tls-certfile go together: give both (or neither, for plain HTTP)")
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
    if flags.operators:
        logins = flags.logins
        unknown = [name for name in flags.operators if logins and name not in logins]
        if unknown:
            parser.error(f"argument --operator: no login named {unknown[0]!r} (logins come from --gradio-auth, "
                         "--gradio-auth-path and --api-auth)")
        if not logins:
            flags.warnings.append("--operator: there are no logins (--gradio-auth / --api-auth), "
                                  "so no one can be an operator")
    if flags.theme and flags.nowebui:
        flags.warnings.append("--theme: --nowebui serves no page; ignored")
    flags.webui_accepted = [name for name in given if name in WEBUI_FLAGS_ACCEPTED]
    for name in flags.webui_accepted:
        flags.warnings.append(f"{name}: {WEBUI_FLAGS_ACCEPTED[name].reason}")
    if "--force-enable-xformers" in flags.webui_accepted:
        flags.xformers = True
    return flags


def _given_webui_flags(ns: argparse.Namespace, argv: list[str]) -> list[str]:
    """The accepted or refused WebUI flags on the command line, each once, in the order given."""
    present = {name for name in (*WEBUI_FLAGS_ACCEPTED, *WEBUI_FLAGS_REFUSED) if hasattr(ns, _flag_dest(name))}

    def position(name: str) -> int:
        for i, arg in enumerate(argv):
            if arg == name or arg.startswith(name + "="):
                return i
        return len(argv)

    return sorted(present, key=position)


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
