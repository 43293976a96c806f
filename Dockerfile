# Rapport bots: the engine, the adapters and the shipped models (baked in), run as a non-root user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY bots bots
COPY training training
COPY exported_models exported_models
RUN pip install . && useradd --create-home --uid 10001 rapport
ENV RAPPORT_MODEL_DIR=/app/exported_models/rapport-chat-persona \
    RAPPORT_ENCODER_DIR=/app/exported_models/minilm-l6-v2-encoder \
    RAPPORT_INDEX_DIR=/app/exported_models/ccc-reply-index
USER rapport
CMD ["rapport", "bots"]
