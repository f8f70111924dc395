#!/usr/bin/env bash
# Installs what is needed and starts the model server + web demo on http://127.0.0.1:7860
set -euo pipefail
cd "$(dirname "$0")"
EDIFF_SKIP_BROWSER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/python app.py "$@"
