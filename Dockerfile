# One image for web, workers and beat. CPU torch wheel by default; for CUDA workers build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim
ARG TORCH_INDEX=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_STATIC_ROOT=/app/staticfiles RLHF_VAR_DIR=/data/var HF_HUB_OFFLINE=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX" ]; then pip install --extra-index-url "$TORCH_INDEX" -r requirements.txt; \
    else pip install -r requirements.txt; fi
COPY . .
RUN useradd --create-home --uid 1000 app && mkdir -p /data/artifacts /data/var /app/staticfiles \
    && chown -R app /data /app/staticfiles
USER app
EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi:application", "--bind", "0.0.0.0:8000"]
