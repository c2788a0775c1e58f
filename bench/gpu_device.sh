#!/usr/bin/env bash
# The prepared GPU check, run on a lent device machine from the repo root (see bench/README.md).
# Needs: the onnxruntime-gpu wheel at $WHL, alphacut's pure-Python dependencies as wheels in
# .whl/, and .gpu6/ holding ISNet's graph without weights (bench/gpu_weights.py strip) and a
# few photos. Writes JSON results to $OUT.
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
WHL=${WHL:-/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHL" .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())"
for v in fp32 fp16; do python3 bench/gpu_weights.py fill .gpu6/$v; done
timeout 200 python3 bench/gpu_check.py .gpu6/fp32/model.onnx --providers cuda \
  --batches 1,2,4,8 --requests 48 > "$OUT/check_fp32.json"
echo "fp32 check rc=$?"
timeout 100 python3 bench/gpu_check.py .gpu6/fp16/model.onnx --providers cuda --batches 1 \
  --requests 32 > "$OUT/check_fp16.json"
echo "fp16 check rc=$?"
# The server path: alphacut serve with the CUDA provider, batch 1 vs dynamic batches of 8.
models=/tmp/ah/models; mkdir -p $models
cp .gpu6/fp32/model.onnx $models/isnet-imgly-medium.fp32.onnx
cp .gpu6/fp32/weights.bin $models/weights.bin
touch $models/isnet-imgly-medium.onnx   # "installed"; the runtime loads the fp32 file
for batch in 1 8; do
  ALPHACUT_HOME=/tmp/ah-$batch ALPHACUT_MODEL_DIR=$models ALPHACUT_PROVIDERS=cuda \
  ALPHACUT_BATCH_SIZE=$batch ALPHACUT_WORKERS=8 ALPHACUT_MAX_QUEUED_PER_KEY=100 ALPHACUT_SYNC_WAIT=120 \
    python3 -m alphacut.cli serve --port 7000 > "$OUT/serve_b$batch.log" 2>&1 &
  pid=$!
  for _ in $(seq 120); do curl -sf localhost:7000/healthz >/dev/null && break; sleep 1; done
  timeout 150 python3 bench/gpu_http.py --photos .gpu6/photos --requests 64 \
    --concurrency 1,8 > "$OUT/http_b$batch.json"
  echo "http batch=$batch rc=$?"; cat "$OUT/http_b$batch.json"
  kill $pid; wait $pid 2>/dev/null
done
grep -h "providers\|fall" "$OUT"/serve_b*.log | head -4
