"""Every flag of the AUTOMATIC1111 WebUI and what Kiln does with it (data for core.cli).

Kept apart from the parser so the parser stays readable: this module is the table, cli.py reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# --- The WebUI's flags ---------------------------------------------------------------------------
# Every flag of the AUTOMATIC1111 WebUI (modules/cmd_args.py up to v1.10, its built-in extensions'
# preload.py, and the ControlNet extension's, the ones found in real webui-user.bat files), so a
# copied COMMANDLINE_ARGS never stops on a name. Each has one of three outcomes:
#   - Kiln does it: a regular flag of the parser in core/cli.py;
#   - accepted: parsed (values consumed with the WebUI's nargs and types), with one start-up line
#     saying why nothing changes (WEBUI_FLAGS_ACCEPTED);
#   - refused: exit 2 with why and what to do, where silently doing nothing would surprise or
#     endanger (WEBUI_FLAGS_REFUSED).
# tests/test_cli.py checks that these three cover WEBUI_FLAGS exactly.

WEBUI_FLAGS: tuple[str, ...] = tuple("""
-f --update-all-extensions --skip-python-version-check --skip-torch-cuda-test --reinstall-xformers
--reinstall-torch --update-check --tests --no-tests --test-server --log-startup --skip-prepare-environment
--skip-install --dump-sysinfo --loglevel --do-not-download-clip --exit --data-dir --config --ckpt --ckpt-dir
--vae-dir --gfpgan-dir --gfpgan-model --no-half --no-half-vae --no-progressbar-hiding --max-batch-count
--embeddings-dir --textual-inversion-templates-dir --hypernetwork-dir --localizations-dir --allow-code
--medvram --medvram-sdxl --lowvram --lowram --always-batch-cond-uncond --unload-gfpgan --precision
--upcast-sampling --share --ngrok --ngrok-region --ngrok-options --enable-insecure-extension-access
--codeformer-models-path --gfpgan-models-path --esrgan-models-path --bsrgan-models-path
--realesrgan-models-path --scunet-models-path --swinir-models-path --ldsr-models-path --clip-models-path
--lora-dir --lyco-dir --lyco-dir-backcompat --xformers --force-enable-xformers --xformers-flash-attention
--deepdanbooru --opt-split-attention --opt-sub-quad-attention --sub-quad-q-chunk-size
--sub-quad-kv-chunk-size --sub-quad-chunk-threshold --opt-split-attention-invokeai --opt-split-attention-v1
--opt-sdp-attention --opt-sdp-no-mem-attention --disable-opt-split-attention --disable-nan-check --use-cpu
--use-ipex --disable-model-loading-ram-optimization --listen --port --show-negative-prompt --ui-config-file
--hide-ui-dir-config --freeze-settings --ui-settings-file --gradio-debug --gradio-auth --gradio-auth-path
--gradio-img2img-tool --gradio-inpaint-tool --gradio-allowed-path --opt-channelslast --styles-file
--autolaunch --theme --use-textbox-seed --disable-console-progressbars --enable-console-prompts --vae-path
--disable-safe-unpickle --api --api-auth --api-log --nowebui --ui-debug-mode --device-id --administrator
--cors-allow-origins --cors-allow-origins-regex --tls-keyfile --tls-certfile --disable-tls-verify
--server-name --gradio-queue --no-gradio-queue --skip-version-check --no-hashing --no-download-sd-model
--subpath --add-stop-route --api-server-stop --timeout-keep-alive --disable-all-extensions
--disable-extra-extensions --skip-load-model-at-start --unix-filenames-sanitization --filenames-max-length
--no-prompt-history --controlnet-dir --controlnet-annotator-models-path --no-half-controlnet
--controlnet-preprocessor-cache-size --controlnet-loglevel --controlnet-tracemalloc
""".split())


@dataclass(frozen=True)
class WebUIFlag:
    """A WebUI flag Kiln accepts without acting on it, or refuses; ``value`` is its metavar when it
    takes one (``type`` checks it as the WebUI does), ``None`` for an on/off flag."""

    reason: str
    value: str | None = None
    type: Callable[[str], Any] = str


_DOES_NOTHING = "does nothing in the WebUI either; ignored"
_ATTENTION = "not needed in Kiln (attention is chosen automatically), ignored"
_NO_DOWNLOAD = "Kiln never downloads a model (its built-in model and the CLIP vocabulary ship with it); nothing to skip"
_FACE = "Kiln has no face restoration (GFPGAN / CodeFormer); ignored"
_UPSCALER_FOLDER = ("Kiln reads these upscaler files from DATA_DIR/{}, where the WebUI keeps them by default "
                    "(move or link them there); ignored")
_INTERNAL = "tunes the WebUI's internals; Kiln has no counterpart, ignored"
_CONTROLNET = "a flag of the sd-webui-controlnet extension; Kiln has no ControlNet, ignored"
_LYCORIS = "Kiln reads LyCORIS files from the LoRA folder (--lora-dir): move them there; ignored"
_FILENAMES = "Kiln names saved images its own way (NNNNN-SEED.png, no characters a file system refuses); ignored"

WEBUI_FLAGS_ACCEPTED: dict[str, WebUIFlag] = {
    # launch.py's install and check steps: launch.sh installs, app.py only serves.
    "-f": WebUIFlag("Kiln does not refuse to run as root; nothing to allow"),
    "--update-all-extensions": WebUIFlag("Kiln has no extension installer; nothing to update"),
    "--skip-python-version-check": WebUIFlag(
        "Kiln does not check the Python version at start (launch.sh picks a supported one); nothing to skip"),
    "--skip-torch-cuda-test": WebUIFlag("Kiln starts on CPU when there is no GPU; nothing to skip"),
    "--reinstall-xformers": WebUIFlag(
        "app.py installs nothing (KILN_EXTRAS=xformers ./launch.sh installs xformers); ignored"),
    "--reinstall-torch": WebUIFlag(
        "app.py installs nothing (launch.sh installs torch; TORCH_COMMAND picks the build); ignored"),
    "--update-check": WebUIFlag("Kiln makes no outside requests, so it checks for no updates; ignored"),
    "--tests": WebUIFlag("Kiln runs no tests at start (tests/run.sh runs them); ignored", "DIR"),
    "--no-tests": WebUIFlag("Kiln runs no tests at start; nothing to skip"),
    "--test-server": WebUIFlag("Kiln's tests build their own server; ignored"),
    "--log-startup": WebUIFlag("use --loglevel DEBUG for a detailed log; ignored"),
    "--skip-prepare-environment": WebUIFlag("app.py prepares no environment (launch.sh installs); nothing to skip"),
    "--skip-install": WebUIFlag("app.py installs nothing (SKIP_INSTALL=1 ./launch.sh skips launch.sh's install); "
                                "nothing to skip"),
    "--do-not-download-clip": WebUIFlag(_NO_DOWNLOAD),
    "--no-download-sd-model": WebUIFlag(_NO_DOWNLOAD),
    "--skip-version-check": WebUIFlag("Kiln checks no torch / xformers versions at start; nothing to skip"),
    # Model files and folders of WebUI features Kiln does not have.
    "--config": WebUIFlag("Kiln reads the model type from the checkpoint's tensors and ships the configs; ignored",
                          "FILE"),
    "--gfpgan-dir": WebUIFlag(_FACE, "DIR"),
    "--gfpgan-model": WebUIFlag(_FACE, "FILE"),
    "--gfpgan-models-path": WebUIFlag(_FACE, "DIR"),
    "--codeformer-models-path": WebUIFlag(_FACE, "DIR"),
    "--unload-gfpgan": WebUIFlag(_DOES_NOTHING),
    "--bsrgan-models-path": WebUIFlag("Kiln has no BSRGAN upscaler; ignored", "DIR"),
    "--realesrgan-models-path": WebUIFlag(_UPSCALER_FOLDER.format("models/RealESRGAN"), "DIR"),
    "--scunet-models-path": WebUIFlag(_UPSCALER_FOLDER.format("models/ScuNET"), "DIR"),
    "--swinir-models-path": WebUIFlag(_UPSCALER_FOLDER.format("models/SwinIR"), "DIR"),
    "--ldsr-models-path": WebUIFlag("Kiln does not run LDSR (a latent diffusion upscaler); ignored", "DIR"),
    "--clip-models-path": WebUIFlag("Kiln has no CLIP interrogator (its taggers are WD14 and BLIP); ignored", "DIR"),
    "--lyco-dir": WebUIFlag(_LYCORIS, "DIR"),
    "--lyco-dir-backcompat": WebUIFlag(_LYCORIS, "DIR"),
    "--textual-inversion-templates-dir": WebUIFlag(
        "Kiln reads prompt templates from textual_inversion_templates/ in the data folder and its own; ignored",
        "DIR"),
    "--localizations-dir": WebUIFlag("Kiln ships its own translations; ignored", "DIR"),
    "--ui-config-file": WebUIFlag("Kiln does not read ui-config.json (its page has its own defaults); ignored",
                                  "FILE"),
    # Code execution the WebUI can switch on: Kiln has no such feature, so there is nothing to switch.
    "--allow-code": WebUIFlag("Kiln has no 'Custom code' script and never runs code sent from the page; ignored"),
    "--enable-insecure-extension-access": WebUIFlag(
        "Kiln's Extensions tab installs no code from the page (extensions are folders you copy); nothing to enable"),
    "--administrator": WebUIFlag("Kiln has no administrator mode (--operator USER lets a login see and cancel "
                                 "every job); ignored"),
    # Attention, precision and memory tweaks of the WebUI's own model code.
    "--force-enable-xformers": WebUIFlag("Kiln treats it as --xformers"),
    "--xformers-flash-attention": WebUIFlag("with --xformers, Kiln lets xformers choose its kernel; ignored"),
    "--opt-split-attention": WebUIFlag(_ATTENTION),
    "--opt-split-attention-invokeai": WebUIFlag(_ATTENTION),
    "--opt-split-attention-v1": WebUIFlag(_ATTENTION),
    "--opt-sub-quad-attention": WebUIFlag(_ATTENTION),
    "--disable-opt-split-attention": WebUIFlag(_ATTENTION),
    "--opt-sdp-no-mem-attention": WebUIFlag(_ATTENTION),
    "--sub-quad-q-chunk-size": WebUIFlag(_ATTENTION, "N", int),
    "--sub-quad-kv-chunk-size": WebUIFlag(_ATTENTION, "N", int),
    "--sub-quad-chunk-threshold": WebUIFlag(_ATTENTION, "PERCENT", int),
    "--opt-channelslast": WebUIFlag(_INTERNAL),
    "--upcast-sampling": WebUIFlag("Kiln picks the sampling precision from --precision and --no-half; ignored"),
    "--disable-nan-check": WebUIFlag(
        "Kiln never stops a job for NaNs (a VAE that gives NaNs in 16 bits is re-run in 32); nothing to disable"),
    "--always-batch-cond-uncond": WebUIFlag(_INTERNAL),
    "--lowram": WebUIFlag(_INTERNAL),
    "--disable-model-loading-ram-optimization": WebUIFlag(_INTERNAL),
    "--medvram-sdxl": WebUIFlag("Kiln has no SDXL-only --medvram; use --medvram to save VRAM on every model; ignored"),
    "--use-ipex": WebUIFlag("Kiln runs on CUDA, Apple MPS or the CPU, not Intel XPU; ignored"),
    "--no-hashing": WebUIFlag(
        "Kiln hashes a model only when it first needs the hash, then keeps it in cache.json; ignored"),
    # The WebUI's page and console.
    "--no-progressbar-hiding": WebUIFlag("Kiln's page shows its own progress; ignored"),
    "--max-batch-count": WebUIFlag("Kiln's page has its own batch count limit; ignored", "N", int),
    "--show-negative-prompt": WebUIFlag(_DOES_NOTHING),
    "--deepdanbooru": WebUIFlag(_DOES_NOTHING),
    "--gradio-img2img-tool": WebUIFlag(_DOES_NOTHING, "TOOL"),
    "--gradio-inpaint-tool": WebUIFlag(_DOES_NOTHING, "TOOL"),
    "--gradio-queue": WebUIFlag(_DOES_NOTHING),
    "--add-stop-route": WebUIFlag(_DOES_NOTHING),
    "--no-gradio-queue": WebUIFlag("Kiln's page always uses Gradio's queue; ignored"),
    "--gradio-debug": WebUIFlag("Kiln logs errors to the console already (--loglevel DEBUG for more); ignored"),
    "--gradio-allowed-path": WebUIFlag("Kiln's page serves only Kiln's own files; ignored", "DIR"),
    "--use-textbox-seed": WebUIFlag("Kiln's page has its own seed field; ignored"),
    "--disable-console-progressbars": WebUIFlag("Kiln prints no progress bars to the console; nothing to disable"),
    "--enable-console-prompts": WebUIFlag("Kiln does not print prompts to the console; ignored"),
    "--no-prompt-history": WebUIFlag("Kiln writes no params.txt; nothing to disable"),
    "--unix-filenames-sanitization": WebUIFlag(_FILENAMES),
    "--filenames-max-length": WebUIFlag(_FILENAMES, "N", int),
    "--disable-tls-verify": WebUIFlag(
        "Kiln never checks its own certificate, so a self-signed one already works; nothing to disable"),
    "--api-server-stop": WebUIFlag("Kiln has no API route that stops the server (stop the process); ignored"),
    # The ControlNet extension's flags (its preload.py), common in webui-user.bat files.
    "--controlnet-dir": WebUIFlag(_CONTROLNET, "DIR"),
    "--controlnet-annotator-models-path": WebUIFlag(_CONTROLNET, "DIR"),
    "--no-half-controlnet": WebUIFlag(_CONTROLNET),
    "--controlnet-preprocessor-cache-size": WebUIFlag(_CONTROLNET, "N", int),
    "--controlnet-loglevel": WebUIFlag(_CONTROLNET, "LEVEL"),
    "--controlnet-tracemalloc": WebUIFlag(_CONTROLNET),
}

_TUNNEL = ("it would put the server on a public tunnel URL; Kiln never opens a tunnel. To reach Kiln from other "
           "machines use --listen with logins (--gradio-auth / --api-auth), or your own VPN or reverse proxy")

WEBUI_FLAGS_REFUSED: dict[str, WebUIFlag] = {
    "--share": WebUIFlag(_TUNNEL.replace("a public tunnel URL", "a public gradio.live URL")),
    "--ngrok": WebUIFlag(_TUNNEL.replace("a public tunnel URL", "a public ngrok URL"), "TOKEN"),
    "--ngrok-region": WebUIFlag(_TUNNEL.replace("a public tunnel URL", "a public ngrok URL"), "REGION"),
    "--ngrok-options": WebUIFlag(_TUNNEL.replace("a public tunnel URL", "a public ngrok URL"), "JSON"),
    "--disable-safe-unpickle": WebUIFlag(
        "Kiln never unpickles code from model files: .ckpt/.pt files load as plain tensors only, and a file that "
        "needs more is refused when it loads. Convert it to .safetensors; remove the flag"),
    "--vae-path": WebUIFlag(
        "Kiln picks the VAE from the sd_vae setting, so this VAE would silently not be used. Put the file in "
        "models/VAE (or --vae-dir) and choose it in Settings (or override_settings in the API)", "FILE"),
    "--ui-settings-file": WebUIFlag(
        "Kiln keeps its settings in DATA_DIR/config.json, so these settings would silently not be used. Point "
        "--data-dir at the folder that holds your config.json", "FILE"),
    "--exit": WebUIFlag("the WebUI installs and quits; Kiln would start the server instead. "
                        "Use ./launch.sh --install-only"),
    "--dump-sysinfo": WebUIFlag("the WebUI writes a sysinfo file and quits; Kiln has no such file and would start "
                                "the server instead. Remove the flag"),
}
