"""Command-line flags: WebUI names and meanings, clear errors for typos and bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import DEFAULT_PORT, FlagError, build_parser, parse_auth, parse_flags

REPO = Path(__file__).resolve().parents[1]


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_flags(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_defaults_match_the_webui():
    f = parse_flags([])
    assert f.port == DEFAULT_PORT == 7860
    assert f.host == "127.0.0.1"
    assert not f.api_enabled and not f.auth_enabled
    assert f.precision == "autocast"
    assert f.use_cpu == [] and f.warnings == []
    assert f.data_dir is None and f.ckpt is None and f.device_id is None


def test_server_flags():
    f = parse_flags(["--listen", "--port", "7861"])
    assert f.host == "0.0.0.0" and f.port == 7861
    f = parse_flags(["--listen", "--server-name", "kiln.lan"])
    assert f.host == "kiln.lan"  # --server-name overrides --listen, as in the WebUI
    assert parse_flags(["--api"]).api_enabled
    f = parse_flags(["--nowebui"])
    assert f.nowebui and f.api_enabled and not f.api  # --nowebui implies --api


def test_folder_flags_are_paths():
    argv = [
        "--data-dir", "d", "--ckpt-dir", "c", "--vae-dir", "v", "--lora-dir", "l",
        "--embeddings-dir", "e", "--hypernetwork-dir", "h", "--esrgan-models-path", "r",
        "--ckpt", "model.safetensors",
    ]
    f = parse_flags(argv)
    assert (f.data_dir, f.ckpt_dir, f.vae_dir, f.lora_dir) == (Path("d"), Path("c"), Path("v"), Path("l"))
    assert (f.embeddings_dir, f.hypernetwork_dir, f.esrgan_models_path) == (Path("e"), Path("h"), Path("r"))
    assert f.ckpt == "model.safetensors"


def test_device_and_precision_flags():
    f = parse_flags([
        "--xformers", "--opt-sdp-attention", "--medvram", "--no-half", "--no-half-vae",
        "--precision", "full", "--device-id", "1", "--use-cpu", "SD", "interrogate",
    ])
    assert f.xformers and f.opt_sdp_attention and f.medvram and f.no_half and f.no_half_vae
    assert f.precision == "full" and f.device_id == 1
    assert f.use_cpu == ["sd", "interrogate"]  # lower-cased, as the WebUI does
    assert parse_flags(["--precision", "half"]).precision == "half"


def test_lowvram_with_medvram_warns():
    f = parse_flags(["--lowvram", "--medvram"])
    assert f.lowvram and f.medvram
    assert any("--lowvram" in w for w in f.warnings)


def test_webui_only_cpu_module_is_accepted_with_warning():
    f = parse_flags(["--use-cpu", "interrogate", "gfpgan"])
    assert f.use_cpu == ["interrogate"]
    assert f.warnings == ["--use-cpu gfpgan: Kiln has no gfpgan module; ignored"]


def test_realesrgan_is_the_esrgan_module():
    assert parse_flags(["--use-cpu", "realesrgan", "esrgan"]).use_cpu == ["esrgan"]


def test_unknown_cpu_module_suggests_the_nearest(capsys):
    err = error_of(["--use-cpu", "interogate"], capsys)
    assert "unknown module 'interogate'" in err and "did you mean interrogate?" in err


def test_unknown_flag_names_the_nearest(capsys):
    err = error_of(["--lisen"], capsys)
    assert "unknown flag --lisen; did you mean --listen?" in err
    err = error_of(["--port", "7861", "--no-half-vea"], capsys)
    assert "did you mean --no-half-vae?" in err
    err = error_of(["--lisen=yes"], capsys)
    assert "unknown flag --lisen; did you mean --listen?" in err  # the value is not part of the name


def test_abbreviations_are_not_guessed(capsys):
    err = error_of(["--lis"], capsys)
    assert "unknown flag --lis" in err


def test_unrelated_flag_points_to_help(capsys):
    err = error_of(["--zzzzzz"], capsys)
    assert "unknown flag --zzzzzz" in err and "--help" in err and "did you mean" not in err


def test_stray_positional_argument(capsys):
    err = error_of(["model.ckpt"], capsys)
    assert "unexpected argument 'model.ckpt'" in err


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http"])
def test_port_out_of_range(port, capsys):
    err = error_of(["--port", port], capsys)
    assert "argument --port" in err


def test_port_bounds_accepted():
    assert parse_flags(["--port", "1"]).port == 1
    assert parse_flags(["--port", "65535"]).port == 65535


def test_bad_device_id(capsys):
    assert "CUDA device index" in error_of(["--device-id", "gpu0"], capsys)
    assert "negative" in error_of(["--device-id", "-1"], capsys)


def test_bad_precision(capsys):
    assert "invalid choice" in error_of(["--precision", "fp16"], capsys)


def test_parse_auth():
    assert parse_auth("a:b") == [("a", "b")]
    assert parse_auth(" u1:p1 , u2:p2,") == [("u1", "p1"), ("u2", "p2")]
    assert parse_auth("u1:p1\nu2:p2,u3:p3\n\n") == [("u1", "p1"), ("u2", "p2"), ("u3", "p3")]
    assert parse_auth("admin:pa:ss") == [("admin", "pa:ss")]  # password may contain colons
    assert parse_auth("") == []


@pytest.mark.parametrize("text", ["bob", "bob:", ":secret", "a:b,broken"])
def test_parse_auth_rejects_malformed(text):
    with pytest.raises(FlagError, match="not 'user:password'"):
        parse_auth(text)


def test_malformed_auth_flag_does_not_echo_password(capsys):
    err = error_of(["--gradio-auth", ":hunter2"], capsys)
    assert "argument --gradio-auth" in err and "hunter2" not in err


def test_gradio_auth_flag_and_file_are_combined(tmp_path):
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("u2:p2,u3:p3\nu4:p4\n", encoding="utf-8")
    f = parse_flags(["--gradio-auth", "u1:p1", "--gradio-auth-path", str(auth_file)])
    assert f.auth == [("u1", "p1"), ("u2", "p2"), ("u3", "p3"), ("u4", "p4")]
    assert f.auth_enabled and f.gradio_auth_path == auth_file


def test_auth_file_errors(tmp_path, capsys):
    err = error_of(["--gradio-auth-path", str(tmp_path / "missing.txt")], capsys)
    assert "--gradio-auth-path" in err and "cannot read" in err and "missing.txt" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("alice\n", encoding="utf-8")
    assert "not 'user:password'" in error_of(["--gradio-auth-path", str(bad)], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert "no user:password entries" in error_of(["--gradio-auth-path", str(empty)], capsys)


def test_every_flag_has_help_text():
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings:
            assert action.help, action.option_strings


def test_every_parsed_flag_reaches_the_dataclass():
    """No dead flags: every option the parser accepts lands in a Flags field (or its auth list)."""
    from dataclasses import fields

    from core.cli import Flags

    names = {f.name for f in fields(Flags)}
    dests = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    webui = {a.dest for a in build_parser()._actions if a.dest.startswith("webui_")}  # Flags.webui_accepted
    assert dests - names - webui == {"gradio_auth"}  # folded into Flags.auth


def test_help_runs_without_heavy_imports():
    code = (
        "import sys; from core.cli import parse_flags\n"
        "try:\n    parse_flags(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'gradio' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--listen" in out.stdout and "--gradio-auth-path" in out.stdout
    for flag in ("--api-auth", "--operator", "--insecure", "--hide-ui-dir-config", "--freeze-settings",
                 "--autolaunch", "--theme", "--api-log"):
        assert flag in out.stdout
    # The accepted and refused WebUI flags are named in the epilog, never cut at a hyphen.
    assert "--opt-split-attention" in out.stdout and "--share" in out.stdout and "README.md" in out.stdout
    assert "--skip-torch-cuda-\n" not in out.stdout


# --- The WebUI's flags: each one done by Kiln, accepted with a line, or refused -------------------------

from core.webui_flags import WEBUI_FLAGS, WEBUI_FLAGS_ACCEPTED, WEBUI_FLAGS_REFUSED  # noqa: E402

# The 76 WebUI flags that stopped the start with exit 2 before (core/cli.py's old WEBUI_FLAGS_NOT_IN_KILN).
FORMERLY_REJECTED = """
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
""".split()

KILN_OPTIONS = {opt: action for action in build_parser()._actions for opt in action.option_strings}
WEBUI_IN_KILN = [f for f in WEBUI_FLAGS if f not in WEBUI_FLAGS_ACCEPTED and f not in WEBUI_FLAGS_REFUSED]


def _pem_pair(tmp_path: Path) -> list[str]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("key", encoding="utf-8")
    cert.write_text("cert", encoding="utf-8")
    return ["--tls-keyfile", str(key), "--tls-certfile", str(cert)]


def _webui_argv(flag: str, tmp_path: Path) -> list[str]:
    """``flag`` with a value of the right kind, when it takes one (the WebUI's nargs and types)."""
    special = {
        "--port": ["7861"], "--gradio-auth": ["u:p"], "--api-auth": ["u:p"], "--device-id": ["0"],
        "--precision": ["full"], "--use-cpu": ["all"], "--theme": ["dark"], "--loglevel": ["debug"],
        "--cors-allow-origins": ["http://localhost:3000"], "--cors-allow-origins-regex": ["https://.*"],
        "--subpath": ["sd"], "--timeout-keep-alive": ["30"],
    }
    if flag in ("--tls-keyfile", "--tls-certfile"):
        return _pem_pair(tmp_path)
    if flag == "--gradio-auth-path":
        auth = tmp_path / "auth.txt"
        auth.write_text("u:p\n", encoding="utf-8")
        return [flag, str(auth)]
    if flag in special:
        return [flag, *special[flag]]
    spec = WEBUI_FLAGS_ACCEPTED.get(flag) or WEBUI_FLAGS_REFUSED.get(flag)
    takes_value = spec.value is not None if spec else KILN_OPTIONS[flag].nargs != 0
    if not takes_value:
        return [flag]
    if spec is not None and spec.type is int:
        return [flag, "16"]
    return [flag, "some/value"]


def test_the_three_outcomes_cover_every_webui_flag_once():
    assert len(WEBUI_FLAGS) == len(set(WEBUI_FLAGS))
    accepted, refused = set(WEBUI_FLAGS_ACCEPTED), set(WEBUI_FLAGS_REFUSED)
    assert not accepted & refused
    assert accepted | refused <= set(WEBUI_FLAGS)
    for flag in WEBUI_IN_KILN:
        assert flag in KILN_OPTIONS and KILN_OPTIONS[flag].help, flag  # a real, documented Kiln flag
    assert set(FORMERLY_REJECTED) <= set(WEBUI_FLAGS)
    assert len(FORMERLY_REJECTED) == 76
    for spec in [*WEBUI_FLAGS_ACCEPTED.values(), *WEBUI_FLAGS_REFUSED.values()]:
        assert spec.reason and not spec.reason.endswith(".")


@pytest.mark.parametrize("flag", WEBUI_FLAGS)
def test_every_webui_flag_has_its_outcome(flag, tmp_path, capsys):
    argv = _webui_argv(flag, tmp_path)
    if flag in WEBUI_FLAGS_REFUSED:
        err = error_of(argv, capsys)
        assert f"{flag}: {WEBUI_FLAGS_REFUSED[flag].reason}" in err
        return
    f = parse_flags(argv)
    if flag in WEBUI_FLAGS_ACCEPTED:
        assert f.webui_accepted == [flag]
        assert f.warnings == [f"{flag}: {WEBUI_FLAGS_ACCEPTED[flag].reason}"]  # exactly one start-up line
    else:
        assert f.webui_accepted == []
        assert not any(w.startswith(f"{flag}:") for w in f.warnings)


def test_formerly_rejected_flags_now_start(tmp_path, capsys):
    """A webui-user.bat with all 76 flags that used to stop the start fails only on the refused ones."""
    argv = [arg for flag in FORMERLY_REJECTED if flag not in WEBUI_FLAGS_REFUSED
            for arg in _webui_argv(flag, tmp_path)]
    f = parse_flags(argv)
    assert len(f.webui_accepted) == len([x for x in FORMERLY_REJECTED if x in WEBUI_FLAGS_ACCEPTED])
    assert f.autolaunch and f.theme == "dark" and f.api_log and f.api_auth == [("u", "p")]
    assert f.hide_ui_dir_config and f.freeze_settings and f.skip_load_model and f.subpath == "/sd"


def test_accepted_lines_follow_the_command_line_order_once_each():
    f = parse_flags(["--skip-torch-cuda-test", "--opt-split-attention", "--listen", "--skip-torch-cuda-test",
                     "--insecure"])
    assert f.webui_accepted == ["--skip-torch-cuda-test", "--opt-split-attention"]
    assert f.warnings == [
        "--skip-torch-cuda-test: Kiln starts on CPU when there is no GPU; nothing to skip",
        "--opt-split-attention: not needed in Kiln (attention is chosen automatically), ignored",
    ]


def test_the_webui_lines_reach_the_start_up_messages(tmp_path):
    from core.settings import Settings

    settings = Settings.from_flags(parse_flags(["--data-dir", str(tmp_path), "--no-half-controlnet"]), tmp_path)
    assert any(w.startswith("--no-half-controlnet: ") and "ControlNet" in w for w in settings.warnings)


def test_values_are_consumed_as_the_webui_does():
    f = parse_flags(["--theme", "dark", "--listen"])
    assert f.theme == "dark" and f.listen
    f = parse_flags(["--sub-quad-q-chunk-size", "1024", "--port", "7861"])
    assert f.port == 7861 and f.webui_accepted == ["--sub-quad-q-chunk-size"]
    f = parse_flags(["--gradio-img2img-tool", "color-sketch", "--api", "--tests=test/", "--use-textbox-seed"])
    assert f.api and f.webui_accepted == ["--gradio-img2img-tool", "--tests", "--use-textbox-seed"]
    f = parse_flags(["--controlnet-dir", "D:/models/ControlNet", "--no-half-controlnet", "--xformers"])
    assert f.xformers and f.webui_accepted == ["--controlnet-dir", "--no-half-controlnet"]


def test_value_less_webui_flags_take_no_value(capsys):
    # --opt-split-attention takes no value, so "7861" is a stray argument, as in the WebUI.
    assert "unexpected argument '7861'" in error_of(["--opt-split-attention", "7861"], capsys)


def test_webui_int_values_are_checked(capsys):
    err = error_of(["--sub-quad-q-chunk-size", "big"], capsys)
    assert "argument --sub-quad-q-chunk-size" in err and "invalid int value" in err


def test_force_enable_xformers_is_xformers():
    f = parse_flags(["--force-enable-xformers"])
    assert f.xformers and f.warnings == ["--force-enable-xformers: Kiln treats it as --xformers"]


def test_share_is_refused_with_the_way_to_share(capsys):
    err = error_of(["--listen", "--share"], capsys)
    assert "--share: it would put the server on a public gradio.live URL; Kiln never opens a tunnel" in err
    assert "--listen with logins" in err


def test_ngrok_is_refused_without_echoing_the_token(capsys):
    err = error_of(["--ngrok", "2abcSECRETtoken", "--ngrok-region", "eu"], capsys)
    assert "--ngrok: it would put the server on a public ngrok URL" in err
    assert "--ngrok-region:" in err  # every refused flag is named, each on its own line
    assert "2abcSECRETtoken" not in err


def test_disable_safe_unpickle_is_refused(capsys):
    err = error_of(["--disable-safe-unpickle"], capsys)
    assert "Kiln never unpickles code from model files" in err and ".safetensors" in err


def test_refused_value_flags_say_what_to_do(capsys):
    assert "models/VAE" in error_of(["--vae-path", "vae.pt"], capsys)
    assert "--data-dir" in error_of(["--ui-settings-file", "other.json"], capsys)
    assert "./launch.sh --install-only" in error_of(["--exit"], capsys)


@pytest.mark.parametrize(("typo", "nearest"), [
    ("--opt-split-atention", "--opt-split-attention"),
    ("--skip-torch-cuda-tset", "--skip-torch-cuda-test"),
    ("--autolanch", "--autolaunch"),
    ("--api-atuh", "--api-auth"),
    ("--no-download-sd-modle", "--no-download-sd-model"),
])
def test_a_typo_of_a_webui_flag_names_it(typo, nearest, capsys):
    assert f"unknown flag {typo}; did you mean {nearest}?" in error_of([typo], capsys)


def test_readme_documents_every_webui_flag():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## WebUI flags", 1)[1].split("\n## ", 1)[0]
    for flag in WEBUI_FLAGS:
        assert f"`{flag}" in section, flag
    assert "--insecure" in section


# --- Kiln flags for the LAN studio (parsed here; acted on by the server) ---------------------------------

def test_api_auth_parses_like_gradio_auth():
    f = parse_flags(["--api-auth", "bot:pa:ss, ci:tok"])
    assert f.api_auth == [("bot", "pa:ss"), ("ci", "tok")] and f.auth == []
    assert parse_flags([]).api_auth == []


@pytest.mark.parametrize("value", ["nocolon", ":secret", "user:", ""])
def test_bad_api_auth_is_a_clear_error(value, capsys):
    err = error_of(["--api-auth", value], capsys)
    assert "argument --api-auth" in err
    assert "user:password" in err
    if value not in ("", "user:"):
        assert value.strip(":") not in err.replace("user:password", "")  # a bare word may be a password


def test_lan_switches():
    f = parse_flags(["--listen", "--insecure", "--hide-ui-dir-config", "--freeze-settings"])
    assert f.insecure and f.hide_ui_dir_config and f.freeze_settings
    f = parse_flags([])
    assert not (f.insecure or f.hide_ui_dir_config or f.freeze_settings or f.operators)


def test_operators_are_logins():
    f = parse_flags(["--gradio-auth", "alice:a,bob:b", "--api-auth", "ci:c", "--operator", "alice, ci",
                     "--operator", "alice"])
    assert f.operators == ["alice", "ci"]
    assert f.logins == ["alice", "bob", "ci"]


def test_operator_errors(capsys):
    err = error_of(["--gradio-auth", "alice:a", "--operator", "alcie"], capsys)
    assert "no login named 'alcie'" in err
    err = error_of(["--gradio-auth", "alice:a", "--operator", "alice:a"], capsys)
    assert "give the name only" in err and "alice:a" not in err
    assert "is empty" in error_of(["--operator", ","], capsys)


def test_operator_without_logins_warns():
    f = parse_flags(["--operator", "alice"])
    assert f.operators == ["alice"] and any("no one can be an operator" in w for w in f.warnings)


def test_theme_and_loglevel_choices(capsys):
    assert parse_flags(["--theme", "Dark"]).theme == "dark"
    assert parse_flags(["--loglevel", "debug"]).loglevel == "DEBUG"
    assert "invalid choice" in error_of(["--theme", "blue"], capsys)
    assert "invalid choice" in error_of(["--loglevel", "loud"], capsys)
    assert parse_flags(["--nowebui", "--theme", "dark"]).warnings == ["--theme: --nowebui serves no page; ignored"]


def test_tls_needs_both_files(tmp_path, capsys):
    f = parse_flags(_pem_pair(tmp_path))
    assert f.tls and f.tls_keyfile == tmp_path / "key.pem" and f.tls_certfile == tmp_path / "cert.pem"
    assert "give both" in error_of(["--tls-keyfile", str(tmp_path / "key.pem")], capsys)
    assert "is not a file" in error_of(["--tls-certfile", str(tmp_path / "missing.pem")], capsys)


def test_cors_subpath_and_keep_alive(capsys):
    f = parse_flags(["--cors-allow-origins", "http://localhost:3000, https://app.example",
                     "--cors-allow-origins-regex", r"https://.*\.example", "--subpath", "/sd/",
                     "--timeout-keep-alive", "60"])
    assert f.cors_allow_origins == ["http://localhost:3000", "https://app.example"]
    assert f.cors_allow_origins_regex == r"https://.*\.example"
    assert f.subpath == "/sd" and f.timeout_keep_alive == 60
    assert "is not an origin" in error_of(["--cors-allow-origins", "localhost:3000"], capsys)
    assert "is not a regular expression" in error_of(["--cors-allow-origins-regex", "("], capsys)
    assert "is not a URL path prefix" in error_of(["--subpath", "../up"], capsys)
    assert "too small" in error_of(["--timeout-keep-alive", "0"], capsys)


def test_skip_load_model_flags():
    assert parse_flags(["--ui-debug-mode"]).skip_load_model
    assert parse_flags(["--skip-load-model-at-start"]).skip_load_model
    assert not parse_flags([]).skip_load_model


def test_readme_counts_match_the_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    counts = (f"of {len(WEBUI_FLAGS)} flags: {len(WEBUI_IN_KILN)} done by Kiln,\n"
              f"{len(WEBUI_FLAGS_ACCEPTED)} accepted, {len(WEBUI_FLAGS_REFUSED)} refused")
    assert counts in readme
