#!/bin/bash
# One GPU guidance-distillation run of --arch v1-gd from v1 on the device machine (see README.md here).
# env: DEVICE (cuda), BATCH (256), BUDGET (UNet-stage seconds, 440), TRAIN_TIMEOUT (520), OUT
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
python3 scripts/device_distill/unpack.py || exit 1
R=/tmp/gd
timeout ${TRAIN_TIMEOUT:-520} python3 -m opensd.training.builtin --data /tmp/emoji --runs $R --arch v1-gd \
  --teacher /tmp/teacher.safetensors --init-unet /tmp/teacher.safetensors --device ${DEVICE:-cuda} \
  --batch ${BATCH:-256} --unet-steps 200000 --unet-budget ${BUDGET:-440} --save-every 500 --sample-every 0 \
  --no-export --no-progress 2>&1 | tee $OUT/train.log
echo "train rc $?"
python3 scripts/device_distill/pack.py $R $OUT 2>&1 | tee -a $OUT/train.log
ls -la $OUT
