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


def test_webui_flag_kiln_lacks_says_so(capsys):
    err = error_of(["--xformers", "--autolaunch"], capsys)
    assert "unknown flag --autolaunch: a WebUI flag that Kiln does not have; remove it" in err


def test_webui_only_flag_list_does_not_shadow_kiln_flags():
    from core.cli import WEBUI_FLAGS_NOT_IN_KILN

    parser = build_parser()
    kiln = {opt for a in parser._actions for opt in a.option_strings}
    assert not kiln & WEBUI_FLAGS_NOT_IN_KILN


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
    assert dests - names == {"gradio_auth"}  # folded into Flags.auth


def test_help_runs_without_heavy_imports():
    code = (
        "import sys; from core.cli import parse_flags\n"
        "try:\n    parse_flags(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'gradio' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--listen" in out.stdout and "--gradio-auth-path" in out.stdout
