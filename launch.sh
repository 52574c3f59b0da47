#!/usr/bin/env bash
# Kiln launcher for Linux and macOS.
#
#   ./launch.sh [app.py flags...]        install what is missing, then start Kiln
#   ./launch.sh --install-only           install what is missing, then stop
#
# Environment (same names as the AUTOMATIC1111 WebUI where it has them):
#   TORCH_COMMAND   pip command that installs torch, run as "python -m $TORCH_COMMAND"
#                   (e.g. "pip install torch --index-url https://download.pytorch.org/whl/cu121")
#   PYTHON          the Python to create .venv with (default: python3.12, 3.11, 3.10, python3)
#   SKIP_INSTALL=1  do not install anything; start with the existing .venv
#   KILN_EXTRAS     optional dependency groups to install too, comma-separated (e.g. "test")
#
# Packages are installed again only when pyproject.toml, the torch command or the extras
# change: the stamp .venv/.kiln-install-stamp records what the last install was for.

set -euo pipefail

KILN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="$KILN_DIR/.venv"
VENV_PY="$VENV_DIR/bin/python"
STAMP="$VENV_DIR/.kiln-install-stamp"
CPU_TORCH_VERSION="2.13.0"
CUDA_TORCH_INDEX="https://download.pytorch.org/whl/cu124"
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"

say() { echo "kiln: $*"; }
die() { echo "kiln: error: $*" >&2; exit 1; }

# Print the first Python 3.10-3.12 found (its command name), or fail.
kiln_find_python() {
    local candidates=(python3.12 python3.11 python3.10 python3)
    if [[ -n "${PYTHON:-}" ]]; then candidates=("$PYTHON"); fi
    local c
    for c in "${candidates[@]}"; do
        command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

kiln_has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1
}

# What decides the torch build, as one line: part of the stamp, so changing it reinstalls.
kiln_torch_spec() {
    if [[ -n "${TORCH_COMMAND:-}" ]]; then
        echo "command: $TORCH_COMMAND"
    elif kiln_has_nvidia_gpu; then
        echo "cuda: pip install torch --index-url $CUDA_TORCH_INDEX"
    else
        echo "cpu: torch==$CPU_TORCH_VERSION or $CPU_TORCH_INDEX"
    fi
}

# sha256 of pyproject.toml plus the torch spec, computed by the given Python (portable: no
# sha256sum on macOS, no shasum on some Linux images).
kiln_install_key() {
    local py="$1" spec="$2"
    "$py" -c 'import hashlib, sys
h = hashlib.sha256(open(sys.argv[1], "rb").read())
h.update(b"\0" + sys.argv[2].encode())
print(h.hexdigest())' "$KILN_DIR/pyproject.toml" "$spec"
}

# Normalise "test, dev" → "dev,test" (sorted, unique, no spaces) so order does not matter.
kiln_normalise_extras() {
    local raw="${1// /}"
    [[ -z "$raw" ]] && return 0
    tr ',' '\n' <<<"$raw" | sed '/^$/d' | sort -u | paste -sd, -
}

# True when the stamp holds this key and already covers every requested extra.
kiln_stamp_is_current() {
    local key="$1" extras="$2"
    [[ -f "$STAMP" ]] || return 1
    local stamped_key stamped_extras
    stamped_key="$(sed -n 1p "$STAMP")"
    stamped_extras="$(sed -n 2p "$STAMP")"
    [[ "$stamped_key" == "$key" ]] || return 1
    local extra
    for extra in ${extras//,/ }; do
        [[ ",$stamped_extras," == *",$extra,"* ]] || return 1
    done
    return 0
}

# Record a finished install. Extras installed earlier for the same key stay recorded, so
# "tests then launch" does not reinstall.
kiln_write_stamp() {
    local key="$1" extras="$2" previous=""
    if [[ -f "$STAMP" && "$(sed -n 1p "$STAMP")" == "$key" ]]; then
        previous="$(sed -n 2p "$STAMP")"
    fi
    printf '%s\n%s\n' "$key" "$(kiln_normalise_extras "$previous,$extras")" >"$STAMP"
}

kiln_cpu_index_reachable() {
    "$VENV_PY" - "$CPU_TORCH_INDEX" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)
EOF
}

kiln_install_torch() {
    if [[ -n "${TORCH_COMMAND:-}" ]]; then
        say "installing torch: python -m $TORCH_COMMAND"
        # Word splitting is wanted: TORCH_COMMAND is a command line, as in the WebUI.
        # shellcheck disable=SC2086
        "$VENV_PY" -m $TORCH_COMMAND
    elif kiln_has_nvidia_gpu; then
        say "installing torch (CUDA build, nvidia-smi found): pip install torch --index-url $CUDA_TORCH_INDEX"
        "$VENV_PY" -m pip install torch --index-url "$CUDA_TORCH_INDEX"
    elif [[ "$(uname -s)" == Linux ]] && kiln_cpu_index_reachable; then
        # PyPI's Linux torch bundles CUDA (gigabytes); the CPU index has the small CPU build.
        say "installing torch (CPU build, no NVIDIA GPU found): pip install torch --index-url $CPU_TORCH_INDEX"
        "$VENV_PY" -m pip install torch --index-url "$CPU_TORCH_INDEX"
    else
        say "installing torch (CPU build, no NVIDIA GPU found): pip install torch==$CPU_TORCH_VERSION"
        if ! "$VENV_PY" -m pip install "torch==$CPU_TORCH_VERSION"; then
            say "torch $CPU_TORCH_VERSION not available; trying: pip install torch --index-url $CPU_TORCH_INDEX"
            "$VENV_PY" -m pip install torch --index-url "$CPU_TORCH_INDEX"
        fi
    fi
}

kiln_create_venv() {
    local py
    py="$(kiln_find_python)" || die "Kiln needs Python 3.10, 3.11 or 3.12 (tried: ${PYTHON:-python3.12 python3.11 python3.10 python3}). Install one, or set PYTHON=/path/to/python3.11"
    say "creating .venv with $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
    "$py" -m venv "$VENV_DIR" || die "could not create $VENV_DIR; on Debian/Ubuntu install the venv module: sudo apt install python3-venv"
}

kiln_install() {
    local extras="$1"
    [[ -x "$VENV_PY" ]] || kiln_create_venv
    "$VENV_PY" -c 'import sys' 2>/dev/null || die "$VENV_PY does not run (Python moved or upgraded?); delete .venv and start again"

    local key
    key="$(kiln_install_key "$VENV_PY" "$(kiln_torch_spec)")"
    if kiln_stamp_is_current "$key" "$extras"; then
        say "packages up to date"
        return 0
    fi
    kiln_install_torch
    local target="."
    [[ -n "$extras" ]] && target=".[$extras]"
    say "installing Kiln and its dependencies: pip install -e $target"
    # Editable: a "git pull" takes effect without reinstalling (pyproject changes re-run this).
    (cd "$KILN_DIR" && "$VENV_PY" -m pip install -e "$target")
    kiln_write_stamp "$key" "$extras"
    say "install complete"
}

kiln_main() {
    local install_only=0 args=() arg
    for arg in "$@"; do
        if [[ "$arg" == "--install-only" ]]; then install_only=1; else args+=("$arg"); fi
    done
    local extras
    extras="$(kiln_normalise_extras "${KILN_EXTRAS:-}")"

    if [[ "${SKIP_INSTALL:-}" == "1" ]]; then
        [[ -x "$VENV_PY" ]] || die "SKIP_INSTALL=1 but there is no $VENV_DIR yet; run once without SKIP_INSTALL"
        say "SKIP_INSTALL=1: not installing"
    else
        kiln_install "$extras"
    fi
    if [[ "$install_only" == 1 ]]; then
        return 0
    fi
    say "starting: python app.py ${args[*]:-}"
    exec "$VENV_PY" "$KILN_DIR/app.py" ${args[@]+"${args[@]}"}
}

# Sourcing this file (tests) defines the functions without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    kiln_main "$@"
fi
