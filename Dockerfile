# CityStream API image: `citystream migrate` then `citystream serve` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY citystream ./citystream
COPY sensorthings ./sensorthings
COPY ingest ./ingest
COPY mqtt_bridge ./mqtt_bridge
COPY geo ./geo
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app citystream

USER citystream
EXPOSE 8080
CMD ["sh", "-c", "citystream migrate && exec citystream serve --host 0.0.0.0"]
