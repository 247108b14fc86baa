# deepfm-tuner: the `deepfm` CLI (workers, init, promote) and the MLflow server, in one image.
#   docker build -t deepfm-tuner .                         # CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t deepfm-tuner:gpu .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    GIT_PYTHON_REFRESH=quiet

# torch first, from PyTorch's own index (CPU wheels by default: ~200 MB instead of ~2 GB of CUDA libraries),
# so the project's install below finds it satisfied and the layer is cached across code changes
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model ./model
COPY tuner ./tuner
RUN pip install . && useradd --create-home --uid 1000 deepfm && chown deepfm /app
COPY studies ./studies

USER deepfm
CMD ["deepfm", "--help"]
