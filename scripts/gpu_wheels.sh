#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (device README; its image has torch, transformers and timm),
# downloaded here into .whl/ for `run(carry=[".whl"])`. The working tree that travels is capped at
# 64 MiB and the tracked files take ~60 MB, so diffusers is slimmed: its pipelines (3.5 MB of the
# 6.4 MB wheel) are dropped, since ediff_core uses only its models. Usage: bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 "wcwidth==0.2.13"
python3 - .whl/diffusers-0.42.1-py3-none-any.whl <<'PY'
import base64, hashlib, sys, zipfile
src = sys.argv[1]
keep_pipelines = {"__init__.py", "pipeline_utils.py", "pipeline_loading_utils.py", "transformers_loading_utils.py"}
def kept(name: str) -> bool:
    parts = name.split("/")
    if parts[:2] == ["diffusers", "modular_pipelines"]:
        return False
    return not (parts[:2] == ["diffusers", "pipelines"] and len(parts) > 2 and parts[2] not in keep_pipelines)
zin = zipfile.ZipFile(src)
files = {i.filename: zin.read(i) for i in zin.infolist() if kept(i.filename) and not i.filename.endswith("/RECORD")}
record_name = next(i.filename for i in zin.infolist() if i.filename.endswith(".dist-info/RECORD"))
rows = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}" for n, b in files.items()]
with zipfile.ZipFile(src + ".slim", "w", zipfile.ZIP_DEFLATED) as z:
    for n, b in files.items():
        z.writestr(n, b)
    z.writestr(record_name, "\n".join(rows + [f"{record_name},,"]) + "\n")
PY
mv .whl/diffusers-0.42.1-py3-none-any.whl.slim .whl/diffusers-0.42.1-py3-none-any.whl
du -cb .whl/*.whl | tail -1 | awk '{printf "wheels: %.1f MB\n", $1 / 1e6}'
git ls-files -z | xargs -0 du -cb | tail -1 | awk '{printf "tracked files: %.1f MB (a call carries at most 67.1 MB in all)\n", $1 / 1e6}'
