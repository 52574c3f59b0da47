@echo off
rem Kiln launcher for Windows (cmd). Same steps and variables as launch.sh:
rem   launch.bat [app.py flags...]      install what is missing, then start Kiln
rem   launch.bat --install-only         install what is missing, then stop
rem   TORCH_COMMAND  pip command that installs torch, run as "python -m %TORCH_COMMAND%"
rem   PYTHON         the Python to create .venv with (default: py -3.12, -3.11, -3.10, python)
rem   SKIP_INSTALL=1 install nothing; start with the existing .venv
rem   KILN_EXTRAS    optional dependency groups to install too, comma-separated (e.g. test)
setlocal EnableExtensions

set "KILN_DIR=%~dp0"
if "%KILN_DIR:~-1%"=="\" set "KILN_DIR=%KILN_DIR:~0,-1%"
set "VENV_DIR=%KILN_DIR%\.venv"
set "VENV_PY=%VENV_DIR%\Scripts\python.exe"
set "KILN_STAMP=%VENV_DIR%\.kiln-install-stamp"
set "KILN_PYPROJECT=%KILN_DIR%\pyproject.toml"
set "CPU_TORCH_VERSION=2.13.0"
set "CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu124"
set "CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu"

rem ---- arguments: --install-only is ours, everything else goes to app.py ----
set "INSTALL_ONLY=0"
set "APP_ARGS="
:parse_args
if "%~1"=="" goto args_done
if /I "%~1"=="--install-only" (
    set "INSTALL_ONLY=1"
) else (
    set APP_ARGS=%APP_ARGS% %1
)
shift
goto parse_args
:args_done

rem (Messages that show paths stay outside parenthesised blocks: a ")" in a path such as
rem "Program Files (x86)" would end the block early.)
if not "%SKIP_INSTALL%"=="1" goto install
if exist "%VENV_PY%" goto skip_install
echo kiln: error: SKIP_INSTALL=1 but there is no %VENV_DIR% yet; run once without SKIP_INSTALL 1>&2
exit /b 1
:skip_install
echo kiln: SKIP_INSTALL=1: not installing
goto start

:install
if exist "%VENV_PY%" goto have_venv
call :find_python
if not errorlevel 1 goto create_venv
echo kiln: error: Kiln needs Python 3.10, 3.11 or 3.12. Install one from python.org, or set PYTHON=C:\path\to\python.exe 1>&2
exit /b 1
:create_venv
echo kiln: creating .venv with %PY_CMD%
%PY_CMD% -m venv "%VENV_DIR%"
if not errorlevel 1 goto have_venv
echo kiln: error: could not create %VENV_DIR% 1>&2
exit /b 1
:have_venv
"%VENV_PY%" -c "import sys" >nul 2>&1
if not errorlevel 1 goto venv_ok
echo kiln: error: %VENV_PY% does not run; delete .venv and start again 1>&2
exit /b 1
:venv_ok

rem ---- what decides the torch build: part of the stamp, so changing it reinstalls ----
set "HAS_NVIDIA=0"
where nvidia-smi >nul 2>&1 && nvidia-smi >nul 2>&1 && set "HAS_NVIDIA=1"
if defined TORCH_COMMAND (
    set "KILN_TORCH_SPEC=command: %TORCH_COMMAND%"
) else if "%HAS_NVIDIA%"=="1" (
    set "KILN_TORCH_SPEC=cuda: pip install torch --index-url %CUDA_TORCH_INDEX%"
) else (
    set "KILN_TORCH_SPEC=cpu: torch==%CPU_TORCH_VERSION% or %CPU_TORCH_INDEX%"
)

rem Normalised extras ("test, dev" -> "dev,test"), the install key, and the stamp check,
rem computed by Python (cmd has no sha256 of its own). "call" keeps cmd from stripping the
rem quotes around the python path inside for /f.
set "KILN_EXTRAS_RAW=%KILN_EXTRAS%"
for /f "usebackq delims=" %%E in (`call "%VENV_PY%" -c "import os; print(','.join(sorted({e.strip() for e in os.environ.get('KILN_EXTRAS_RAW', '').split(',') if e.strip()})) or '-')"`) do set "KILN_EXTRAS_N=%%E"
if "%KILN_EXTRAS_N%"=="-" set "KILN_EXTRAS_N="
for /f "usebackq delims=" %%K in (`call "%VENV_PY%" -c "import hashlib, os; h = hashlib.sha256(open(os.environ['KILN_PYPROJECT'], 'rb').read()); h.update(b'\0' + os.environ['KILN_TORCH_SPEC'].encode()); print(h.hexdigest())"`) do set "KILN_KEY=%%K"

"%VENV_PY%" -c "import os, sys; p = os.environ['KILN_STAMP']; lines = (open(p).read().splitlines() + ['', ''])[:2] if os.path.exists(p) else ['', '']; want = [e for e in os.environ.get('KILN_EXTRAS_N', '').split(',') if e]; have = lines[1].split(','); sys.exit(0 if lines[0] == os.environ['KILN_KEY'] and all(e in have for e in want) else 1)"
if not errorlevel 1 (
    echo kiln: packages up to date
    goto installed
)

rem ---- torch ----
if defined TORCH_COMMAND (
    echo kiln: installing torch: python -m %TORCH_COMMAND%
    "%VENV_PY%" -m %TORCH_COMMAND%
    if errorlevel 1 goto install_failed
) else if "%HAS_NVIDIA%"=="1" (
    echo kiln: installing torch ^(CUDA build, nvidia-smi found^): pip install torch --index-url %CUDA_TORCH_INDEX%
    "%VENV_PY%" -m pip install torch --index-url %CUDA_TORCH_INDEX%
    if errorlevel 1 goto install_failed
) else (
    echo kiln: installing torch ^(CPU build, no NVIDIA GPU found^): pip install torch==%CPU_TORCH_VERSION%
    "%VENV_PY%" -m pip install "torch==%CPU_TORCH_VERSION%"
    if errorlevel 1 (
        echo kiln: torch %CPU_TORCH_VERSION% not available; trying: pip install torch --index-url %CPU_TORCH_INDEX%
        "%VENV_PY%" -m pip install torch --index-url %CPU_TORCH_INDEX%
        if errorlevel 1 goto install_failed
    )
)

rem ---- Kiln, editable: a "git pull" takes effect without reinstalling ----
set "TARGET=."
if defined KILN_EXTRAS_N set "TARGET=.[%KILN_EXTRAS_N%]"
echo kiln: installing Kiln and its dependencies: pip install -e %TARGET%
pushd "%KILN_DIR%"
"%VENV_PY%" -m pip install -e "%TARGET%"
set "PIP_RC=%ERRORLEVEL%"
popd
if not "%PIP_RC%"=="0" goto install_failed

rem Extras installed earlier for the same key stay recorded (tests, then launch: no reinstall).
"%VENV_PY%" -c "import os; p = os.environ['KILN_STAMP']; key = os.environ['KILN_KEY']; old = (open(p).read().splitlines() + ['', ''])[:2] if os.path.exists(p) else ['', '']; extras = set(os.environ.get('KILN_EXTRAS_N', '').split(',')) | (set(old[1].split(',')) if old[0] == key else set()); open(p, 'w').write(key + '\n' + ','.join(sorted(e for e in extras if e)) + '\n')"
echo kiln: install complete

:installed
if "%INSTALL_ONLY%"=="1" exit /b 0

:start
echo kiln: starting: python app.py%APP_ARGS%
"%VENV_PY%" "%KILN_DIR%\app.py"%APP_ARGS%
exit /b %ERRORLEVEL%

:install_failed
echo kiln: error: installation failed (see the pip messages above) 1>&2
exit /b 1

rem ---- sets PY_CMD to the first Python 3.10-3.12 found; errorlevel 1 if none ----
:find_python
set "VERSION_CHECK=import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)"
if defined PYTHON (
    "%PYTHON%" -c "%VERSION_CHECK%" >nul 2>&1 && (set PY_CMD="%PYTHON%"& exit /b 0)
    exit /b 1
)
for %%V in (3.12 3.11 3.10) do (
    py -%%V -c "%VERSION_CHECK%" >nul 2>&1 && (set "PY_CMD=py -%%V"& exit /b 0)
)
python -c "%VERSION_CHECK%" >nul 2>&1 && (set "PY_CMD=python"& exit /b 0)
exit /b 1
